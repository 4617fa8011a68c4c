"""Raw-image manifest and output_dir lock (issue #11), without Snakemake."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pandas as pd
import pytest

from workflow_scripts import output_lock
from workflow_scripts.data import manifest
from workflow_scripts.errors import InputError


# ------------------------------------------------------------------ manifest
@pytest.fixture
def images(tmp_path):
    files = [tmp_path / "img" / f"{i}.tif" for i in range(3)]
    files[0].parent.mkdir()
    for i, f in enumerate(files):
        f.write_bytes(b"x" * (10 + i))
    table = pd.DataFrame(
        {
            "image_id": ["a", "b"],
            "path_DAPI": [str(files[1]), str(files[0])],
            "path_Actin": [str(files[2]), str(tmp_path / "missing.tif")],
        }
    )
    table.to_parquet(tmp_path / "table.parquet")
    out = tmp_path / "raw_images.tsv"
    assert manifest.main(["--table", str(tmp_path / "table.parquet"), "--out", str(out)]) == 0
    return files, out, tmp_path


def test_manifest_lists_every_file_with_size_and_mtime(images):
    files, out, tmp_path = images
    lines = out.read_text().splitlines()
    assert lines[0] == "path\tsize\tmtime_ns"
    expected = sorted([str(f) for f in files] + [str(tmp_path / "missing.tif")])
    assert [line.split("\t")[0] for line in lines[1:]] == expected
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in lines[1:]}
    for f in files:  # brute force against os.stat
        assert rows[str(f)] == [str(f.stat().st_size), str(f.stat().st_mtime_ns)]
    assert rows[str(tmp_path / "missing.tif")] == ["-1", "0"]


def test_unchanged_files_leave_the_manifest_untouched(images):
    _, out, _ = images
    os.utime(out, ns=(1, 1))
    assert manifest.refresh(out) is False
    assert out.stat().st_mtime_ns == 1  # Snakemake sees nothing new


@pytest.mark.parametrize("change", ["content", "older_time", "appears"])
def test_a_changed_file_rewrites_the_manifest(images, change):
    files, out, tmp_path = images
    before = out.read_text()
    if change == "content":
        files[1].write_bytes(b"y" * 3)
    elif change == "older_time":  # cp -p of an older file: same size, earlier mtime
        st = files[1].stat()
        os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    else:
        (tmp_path / "missing.tif").write_bytes(b"z")
    assert manifest.refresh(out) is True
    assert out.read_text() != before
    assert manifest.refresh(out) is False


def test_missing_or_foreign_manifest_is_left_alone(tmp_path):
    assert manifest.refresh(tmp_path / "absent.tsv") is False
    empty = tmp_path / "empty.tsv"  # what `snakemake --touch` leaves
    empty.write_text("")
    assert manifest.refresh(empty) is False and empty.read_text() == ""


# ------------------------------------------------------------------ lock
def write_lock(out, **fields):
    (out / output_lock.LOCK_NAME).write_text(json.dumps(fields))


def test_acquire_release_and_refuse_a_live_holder(tmp_path):
    out = tmp_path / "results"
    path = output_lock.acquire(out, "/my/checkout")
    lock = json.loads(path.read_text())
    assert (lock["host"], lock["pid"], lock["checkout"]) == (
        socket.gethostname(),
        os.getpid(),
        "/my/checkout",
    )
    output_lock.release(out)
    assert not path.exists()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        write_lock(
            out,
            host=socket.gethostname(),
            pid=holder.pid,
            checkout="/other",
            start=output_lock._process_start(holder.pid),
        )
        with pytest.raises(InputError, match=rf"in use by snakemake PID {holder.pid} .*/other"):
            output_lock.acquire(out, "/my/checkout")
        output_lock.release(out)  # not ours: kept
        assert path.exists()
    finally:
        holder.kill()
        holder.wait()
    path = output_lock.acquire(out, "/my/checkout")  # holder gone: stale, taken over
    assert json.loads(path.read_text())["pid"] == os.getpid()


def test_a_reused_pid_or_another_host(tmp_path):
    # our own PID with another start time: the process that wrote it is gone
    write_lock(tmp_path, host=socket.gethostname(), pid=os.getpid(), start="1")
    assert output_lock.is_stale(output_lock.holder(tmp_path))
    write_lock(tmp_path, host="other-node", pid=1, checkout="/c")
    assert not output_lock.is_stale(output_lock.holder(tmp_path))
    with pytest.raises(InputError, match="host other-node"):
        output_lock.acquire(tmp_path, "/me")
    (tmp_path / output_lock.LOCK_NAME).write_text("{not json")
    with pytest.raises(InputError, match="cannot be read"):
        output_lock.acquire(tmp_path, "/me")


def test_recovery_removes_only_the_dead_runs_snakemake_locks(tmp_path):
    out, locks = tmp_path / "results", tmp_path / ".snakemake" / "locks"
    out.mkdir()
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text(f"{out}/cache/meta.json\n{out}/cache/DAPI.npy\n")
    (locks / "0.input.lock").write_text("workflow_scripts/data/cache.py\n")
    (locks / "1.output.lock").write_text(f"{tmp_path}/other_results/x\n")
    (locks / "1.input.lock").write_text("y\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert output_lock.recover_after_crash(out, tmp_path / ".snakemake") is False  # no lock
    write_lock(out, host=socket.gethostname(), pid=dead.pid)
    assert output_lock.recover_after_crash(out, tmp_path / ".snakemake") is True
    assert sorted(p.name for p in locks.iterdir()) == ["1.input.lock", "1.output.lock"]
    assert not (out / output_lock.LOCK_NAME).exists()
