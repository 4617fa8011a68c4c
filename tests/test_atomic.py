"""Atomic writes: complete files under final names only, nothing left behind on failure."""

import os

import pytest

from workflow_scripts.atomic import append_line, atomic_dir, atomic_path, write_json


def test_failed_write_leaves_no_file_and_no_temp(tmp_path):
    target = tmp_path / "out" / "table.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_failed_write_keeps_previous_version(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"nsc": 0.5})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("{broken")
            raise RuntimeError("crash")
    assert target.read_text().strip().startswith("{") and '"nsc": 0.5' in target.read_text()


def test_written_file_follows_umask_not_mkstemp_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_atomic_dir_replaces_whole_directory_only_on_success(tmp_path):
    target = tmp_path / "cache"
    with atomic_dir(target) as tmp:
        (tmp / "a.npy").write_text("1")
    with pytest.raises(ValueError):
        with atomic_dir(target) as tmp:
            (tmp / "b.npy").write_text("2")
            raise ValueError("crash")
    assert sorted(p.name for p in target.iterdir()) == ["a.npy"]
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def _append_many(path, tag, n):
    for i in range(n):
        append_line(path, f'{{"writer": "{tag}", "i": {i}, "pad": "{"x" * 200}"}}')


def test_concurrent_appends_keep_every_line_whole(tmp_path):
    # two training processes on one log.jsonl (issue #11): no line lost, none interleaved
    import json
    import multiprocessing

    path = tmp_path / "log.jsonl"
    procs = [
        multiprocessing.get_context("fork").Process(target=_append_many, args=(path, t, 300))
        for t in "abc"
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted((d["writer"], d["i"]) for d in lines) == [
        (t, i) for t in "abc" for i in range(300)
    ]


def test_append_line_refuses_a_newline(tmp_path):
    with pytest.raises(ValueError):
        append_line(tmp_path / "log.jsonl", "one\ntwo")
