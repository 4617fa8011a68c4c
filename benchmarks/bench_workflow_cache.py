"""Wall-clock of a second experiment with and without Snakemake's between-workflow cache (demo).

    python benchmarks/bench_workflow_cache.py            # 3 full demo runs, ~10 min on 2 cores
    python benchmarks/bench_workflow_cache.py --data-only  # only the data stage (~1 min)

In a throwaway copy of the repository: experiment A (the demo) runs with `--cache` and fills the
cache; experiment B (another output_dir, another training recipe) runs with `--cache`; B again,
in a third output_dir, without `--cache`. Prints both wall-clocks, the data-stage jobs' own times
(the `benchmark:` lines workflow_scripts.timed writes into their logs) and the disk the data stage
takes per experiment, with and without the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from repo_copy import copy_repo

from workflow_scripts.timed import read_timing

DATA_RULES = ["generate_demo_data", "prepare_metadata", "validate_images", "build_image_cache"]
SECOND_RECIPE = {"train": {"optimizer": {"lr": 2.0e-4}, "seed": 1}}


def run_experiment(
    workdir: Path, name: str, overlay: dict, cache: Path | None, targets: list[str]
) -> tuple[float, float]:
    """(wall s, CPU s of Snakemake and every job it ran): on a shared machine CPU time is the
    steadier figure."""
    config = workdir / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"output_dir": f"results/{name}", **overlay}))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        "2",
        "--configfile",
        "config/demo.yaml",
        str(config),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if cache is not None:
        cmd.append("--cache")
        env["SNAKEMAKE_OUTPUT_CACHE"] = str(cache)
    cmd += ["--", *[t.format(out=f"results/{name}") for t in targets]]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0:
        sys.exit(f"experiment {name} failed:\n{result.stderr[-3000:]}")
    return wall, cpu


def data_stage_timing(out: Path) -> dict:
    timings = {}
    for rule in DATA_RULES:
        log = out / "logs" / f"{rule}.log"
        timing = read_timing(log.read_text()) if log.is_file() else None
        timings[rule] = timing  # None: taken from the cache (no command ran)
    return timings


def disk_bytes(path: Path) -> int:
    """Bytes of regular files under `path`, not following links (a cached output is a link)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = Path(root) / name
            if not full.is_symlink():
                total += full.stat().st_size
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-only", action="store_true", help="run only the data stage")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    targets = (
        ["{out}/cache/meta.json", "{out}/data/validation_report.json"]
        if args.data_only
        else ["all"]
    )

    tmp = Path(tempfile.mkdtemp(prefix="bench_workflow_cache."))
    workdir = tmp / "repo"
    copy_repo(workdir)
    cache = tmp / "cache"
    cache.mkdir()
    try:
        walls = {
            "A (demo, --cache, fills the cache)": run_experiment(workdir, "a", {}, cache, targets),
            "B (other recipe, --cache)": run_experiment(
                workdir, "b", SECOND_RECIPE, cache, targets
            ),
            "B (other recipe, no cache)": run_experiment(
                workdir, "b_nocache", SECOND_RECIPE, None, targets
            ),
        }
        timings = {
            name: data_stage_timing(workdir / "results" / name) for name in ("a", "b", "b_nocache")
        }
        stage = ("demo_data", "data", "cache")
        disk = {
            "data stage per experiment without cache (MB)": sum(
                disk_bytes(workdir / "results/b_nocache" / d) for d in stage
            )
            / 1e6,
            "data stage per experiment with cache (MB)": sum(
                disk_bytes(workdir / "results/b" / d) for d in stage
            )
            / 1e6,
            "cache folder, shared (MB)": disk_bytes(cache) / 1e6,
        }
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"targets: {'data stage' if args.data_only else 'whole pipeline (all)'}; 2 cores")
    for name, (wall, cpu) in walls.items():
        print(f"  {name:40s} {wall:7.1f} s wall {cpu:7.1f} s CPU")
    saved = [
        walls["B (other recipe, no cache)"][i] - walls["B (other recipe, --cache)"][i]
        for i in (0, 1)
    ]
    print(f"  second experiment saves {saved[0]:.1f} s wall, {saved[1]:.1f} s CPU with the cache")
    print("data-stage jobs of B without cache (s wall / s CPU / MB peak RSS):")
    for rule, timing in timings["b_nocache"].items():
        print(f"  {rule:20s} {timing['s']:7.2f} {timing['cpu_time']:7.2f} {timing['max_rss']:7.1f}")
    ran = [rule for rule, timing in timings["b"].items() if timing is not None]
    print(f"data-stage jobs of B with cache that ran a command: {ran or 'none'}")
    for name, value in disk.items():
        print(f"  {name:45s} {value:8.1f}")
    if args.json:
        numbers = {
            "wall_cpu_s": walls,
            "saved_wall_cpu_s": saved,
            "data_stage": timings,
            "disk_mb": disk,
        }
        args.json.write_text(json.dumps(numbers, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
