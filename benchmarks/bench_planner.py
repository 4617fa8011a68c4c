"""How long the memory planner takes, with its count cache cold and warm (count_cache.py).

    python benchmarks/bench_planner.py                 # ~3 min on 2 shared cores
    python benchmarks/bench_planner.py --skip-all-models --repeats 1
    python benchmarks/bench_planner.py --repo /path/to/another/checkout   # e.g. the code before

Each measurement is a fresh process (imports included), timed by wall clock and by its CPU
time (user + system of the process and its children: on a shared machine the steadier figure);
the best of --repeats. Cold: an empty cache folder before each run; warm: the folder the cold
run filled. Measured:

- `memory_plan --all-models` (every timm DINOv3 ViT) and `memory_plan` (config.yaml's 2
  architectures);
- `snakemake -n` of config.yaml in a throwaway copy of the repository, with a stand-in image
  root (an empty folder) so the start-up check passes: with the GPU architectures (the start-up
  check, the training rules' strategy and the extraction jobs' host memory ask the planner)
  and the same with `gpus: 0` (nothing asks it); the difference is the planner's share;
- the planner's calls on their own, in one fresh process: the start-up check's model rules and
  every architecture's strategy and extraction memory, after the configuration is loaded (cold:
  torch and timm imports included).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import yaml
from repo_copy import copy_repo

REPO = Path(__file__).resolve().parents[1]
CACHE_ENV = "BBBC021_DINOV3_CACHE"

PLANNER_CALLS = """
import time
from workflow_scripts import config as cfg, config_check
from workflow_scripts.cluster import resources

config = cfg.load(["config.yaml"])
start = time.process_time()
config_check.MODEL_RULES[0](config), config_check.MODEL_RULES[1](config)
for arch in cfg.architecture_names(config):
    resources.strategy_args(config, arch), resources.extract_mem_mb(config, arch)
print(time.process_time() - start)
"""


def run(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float, str]:
    """(wall s, CPU s of the process and its children, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result.stdout


def best(cmd: list[str], cwd: Path, env: dict, cache: Path, cold: bool, repeats: int):
    """Best (wall, CPU, stdout) of `repeats` runs; cold: the cache folder emptied before each."""
    runs = []
    for _ in range(repeats):
        if cold:
            shutil.rmtree(cache, ignore_errors=True)
        runs.append(run(cmd, cwd, env))
    steadiest = min(runs, key=lambda r: r[1])  # its stdout: the lowest CPU time
    return min(r[0] for r in runs), steadiest[1], steadiest[2]


def line(name: str, cold: tuple[float, float], warm: tuple[float, float]) -> None:
    print(
        f"{name:56} cold {cold[0]:6.2f} s wall {cold[1]:6.2f} s CPU | "
        f"warm {warm[0]:6.2f} s wall {warm[1]:6.2f} s CPU",
        flush=True,
    )


def measure(name: str, cmd: list[str], repo: Path, env: dict, cache: Path, repeats: int) -> dict:
    """{'cold': (wall, CPU), 'warm': ..., 'cold_out': stdout, 'warm_out': ...}; printed when
    named."""
    cold = best(cmd, repo, env, cache, True, repeats)
    warm = best(cmd, repo, env, cache, False, repeats)
    if name:
        line(name, cold[:2], warm[:2])
    return {"cold": cold[:2], "warm": warm[:2], "cold_out": cold[2], "warm_out": warm[2]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="best of N runs (default 2)")
    parser.add_argument("--skip-all-models", action="store_true")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout to time")
    parser.add_argument(
        "--no-shipped",
        action="store_true",
        help="ignore the counts the repository ships (workflow_scripts/meta_counts.json): cold "
        "then counts everything; by default cold is a fresh clone's empty folder",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_planner_") as tmp:
        tmp = Path(tmp)
        repo = copy_repo(tmp / "repo") if args.repo == REPO else args.repo.resolve()
        cache = tmp / "cache"
        env = {
            **os.environ,
            CACHE_ENV: str(cache),
            "PYTHONPATH": str(repo),
            "HF_HUB_OFFLINE": "1",
            "BBBC021_DINOV3_SHIPPED_COUNTS": "off" if args.no_shipped else "on",
        }
        (tmp / "images").mkdir()
        stand_in = {
            "data": {"official": {"image_root": str(tmp / "images")}},
            "output_dir": str(tmp / "results"),
        }
        overlay = tmp / "stand_in.yaml"
        overlay.write_text(yaml.safe_dump(stand_in))
        config = yaml.safe_load((repo / "config.yaml").read_text())
        cpu_only = tmp / "cpu_only.yaml"
        cpu_only.write_text(
            yaml.safe_dump({"architectures": [{**a, "gpus": 0} for a in config["architectures"]]})
        )
        versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("torch", "timm", "snakemake"))
        print(
            f"planner timings: {platform.node()}, {os.cpu_count()} cores, python "
            f"{platform.python_version()}, {versions}; best of {args.repeats}; code: {repo}",
            flush=True,
        )
        plan = [sys.executable, "-m", "workflow_scripts.cluster.memory_plan"]
        if not args.skip_all_models:
            name = "memory_plan --all-models (every DINOv3 ViT)"
            measure(name, [*plan, "--all-models"], repo, env, cache, args.repeats)
        name = "memory_plan (config.yaml: 2 architectures)"
        measure(name, plan, repo, env, cache, args.repeats)
        dry = [sys.executable, "-m", "snakemake", "-n", "--quiet", "--configfile", "config.yaml"]
        dry.append(str(overlay))
        name = "snakemake -n, config.yaml (2 GPU architectures)"
        gpu = measure(name, dry, repo, env, cache, args.repeats)
        name = "snakemake -n, the same with gpus: 0 (no planner call)"
        cpu = measure(name, [*dry, str(cpu_only)], repo, env, cache, args.repeats)
        share = {
            state: tuple(g - c for g, c in zip(gpu[state], cpu[state]))
            for state in ("cold", "warm")
        }
        line("  planner's share of snakemake -n (the difference)", share["cold"], share["warm"])
        calls = measure("", [sys.executable, "-c", PLANNER_CALLS], repo, env, cache, args.repeats)
        print(
            f"{'  planner calls alone (CPU s in one fresh process)':56} "
            f"cold {float(calls['cold_out']):6.2f} s CPU             | "
            f"warm {float(calls['warm_out']):6.2f} s CPU",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
