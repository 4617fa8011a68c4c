"""Full disks (issue #11): one line naming the file and the bytes, the previous state kept."""

from __future__ import annotations

import errno

import pytest
import torch

from workflow_scripts import disk_space
from workflow_scripts.atomic import write_text
from workflow_scripts.errors import InputError, cli
from workflow_scripts.train import resume_state


def test_enospc_anywhere_in_a_cli_is_one_line_and_status_2(capsys):
    @cli
    def main(argv=None):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/features.parquet")

    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: /data/out/features.parquet: no space left on device")
    assert err.count("\n") == 1


def test_a_library_short_write_with_a_stack_trace_is_one_line_too(capsys):
    @cli
    def main(argv=None):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:778] . unexpected pos 9 vs 4\n"
            "frame #0: c10::Error::Error() + 0x1\nframe #1: ..."
        )

    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on device (") and err.count("\n") == 1


def test_other_os_errors_are_not_mistaken_for_a_full_disk():
    @cli
    def main(argv=None):
        raise PermissionError(errno.EACCES, "Permission denied", "/x")

    with pytest.raises(PermissionError):
        main([])


def state(n: int) -> dict:
    return {"epoch": n, "student": {"w": torch.full((256,), float(n))}, "opt": [torch.zeros(8)]}


def test_resume_state_on_a_full_disk_names_file_and_bytes_and_keeps_the_old(tmp_path, monkeypatch):
    path = tmp_path / "resume" / "state.pt"
    resume_state.save_resume_state(path, state(1))
    monkeypatch.setattr(disk_space, "free_bytes", lambda directory: 100)
    with pytest.raises(
        InputError,
        match=rf"{tmp_path / 'resume'}: not enough free disk space for "
        r"the resume state state\.pt: needs 1056 bytes",
    ):
        resume_state.save_resume_state(path, state(2))
    assert resume_state.load_resume_state(path)["epoch"] == 1


def test_a_short_write_inside_torch_save_is_named_not_unexpected_pos(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    resume_state.save_resume_state(path, state(1))

    def short_write(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . unexpected pos 64 vs 32")

    monkeypatch.setattr(torch, "save", short_write)
    with pytest.raises(
        InputError,
        match=r"state\.pt: no space left on device writing the resume "
        r"state: needs about 1056 bytes .*previous state is kept",
    ):
        resume_state.save_resume_state(path, state(2))
    monkeypatch.undo()
    assert resume_state.load_resume_state(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_stale_temp_files_of_an_output_are_removed_by_its_next_write(tmp_path):
    (tmp_path / ".log.jsonl.abcd1234.tmp").write_text("half")  # a killed writer's
    (tmp_path / ".log.jsonl.bak.abcd1234.tmp").write_text("another file's")
    write_text(tmp_path / "log.jsonl", "line\n")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".log.jsonl.bak.abcd1234.tmp", "log.jsonl"]
