"""What `snakemake -n` says at start about a bad config file or output_dir (issue 23, cases 3, 7,
8, 10, 12, 14): one `config error:` line naming the file and line or the key, exit status 1,
no Python traceback, nothing run. Dry runs in one repository copy (seconds each)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hang_guard import HANG_GUARD_S
from workflow_copy import DEMO_CONFIG, copy_repo, demo_config, write_overlay

ARCH = demo_config()["architectures"][0]["name"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("start") / "repo")


def dry_run(repo: Path, *args: str, prefix: tuple[str, ...] = ()) -> tuple[int, str]:
    """`snakemake -n` on the demo config (+ args); `prefix`: a command that runs it (unshare)."""
    command = [sys.executable, "-m", "snakemake", "-n", "--configfile", DEMO_CONFIG, *args]
    result = subprocess.run(
        [*prefix, *command],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return result.returncode, result.stdout + result.stderr


def assert_config_error(status: int, output: str, message: str) -> None:
    assert status == 1, output[-3000:]
    assert f"config error: {message}" in output, output[-3000:]
    assert "Traceback" not in output


def test_a_key_given_twice_in_an_overlay_stops_the_dry_run(repo, tmp_path):
    """Case 3: the second `data:` replaced the first and the run fell back to the demo data."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        "data:\n  source: official\n  official:\n    image_root: /data\n"
        f"output_dir: {tmp_path / 'out'}\ndata:\n  channels: [DAPI]\n"
    )
    status, output = dry_run(repo, str(overlay))
    assert_config_error(
        status, output, f"{overlay}: line 6, column 1: key 'data' is given twice (first on line 1)"
    )


def test_a_tab_in_config_yaml_is_named_with_file_and_line(repo):
    """Case 10: Snakemake's own message named neither file nor line."""
    config = repo / "config.yaml"
    original = config.read_text()
    lines = original.splitlines(keepends=True)
    row = next(i for i, line in enumerate(lines) if line.startswith("train:"))
    lines.insert(row + 1, "\tepochs: 3\n")
    config.write_text("".join(lines))
    try:
        status, output = dry_run(repo)
    finally:
        config.write_text(original)
    assert_config_error(
        status,
        output,
        f"config.yaml: line {row + 2}, column 1: a tab character; YAML indents with spaces only",
    )


def test_an_output_dir_that_is_a_file_is_named(repo, tmp_path):
    """Case 7: NotADirectoryError with stack frames before."""
    (tmp_path / "results").write_text("not a folder")
    status, output = dry_run(repo, "--config", f"output_dir={tmp_path / 'results'}")
    assert_config_error(
        status, output, f"config key 'output_dir' -> {tmp_path / 'results'} is a file"
    )


def test_an_output_dir_on_a_read_only_file_system_is_named(repo, tmp_path):
    """Case 8: the dry run passed and the run ended in OSError with stack frames."""
    mount = tmp_path / "ro"
    mount.mkdir()
    if (
        not shutil.which("unshare")
        or subprocess.run(
            ["unshare", "-m", "mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(mount)],
            capture_output=True,
        ).returncode
    ):
        pytest.skip("needs root to mount a read-only file system (unshare -m)")
    # a mount namespace of its own: the read-only mount exists for this dry run only
    mounted = (
        "unshare",
        "-m",
        "sh",
        "-c",
        f"mount -t tmpfs -o ro tmpfs '{mount}' && exec \"$@\"",
        "sh",
    )
    status, output = dry_run(repo, "--config", f"output_dir={mount / 'results'}", prefix=mounted)
    assert_config_error(
        status,
        output,
        f"config key 'output_dir' -> {mount / 'results'}: cannot write in {mount} "
        "(Read-only file system)",
    )


def test_the_checkout_as_output_dir_is_refused(repo):
    """Case 14: `output_dir: .` put outputs beside the tracked files."""
    status, output = dry_run(repo, "--config", "output_dir=.")
    assert_config_error(status, output, f"config key 'output_dir' -> . is the checkout {repo}")


def test_weights_naming_a_folder_are_refused_naming_the_key(repo, tmp_path):
    """Case 12: the training job said "weights file not found" although the path existed."""
    folder = tmp_path / "weights"
    folder.mkdir()
    arch = {"name": ARCH, "weights": str(folder), "gpus": 0}
    overlay = write_overlay(tmp_path / "overlay.yaml", {"architectures": [arch]})
    status, output = dry_run(repo, str(overlay))
    assert_config_error(
        status, output, f"config key 'architectures.0.weights' -> {folder} is a folder"
    )
