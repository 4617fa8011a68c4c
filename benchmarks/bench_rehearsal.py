"""The rehearsal at two sizes: cost of every stage of the real geometry, and how it grows.

    python benchmarks/bench_rehearsal.py --work-dir /scratch/rehearsal --sites 1 4
    python benchmarks/bench_rehearsal.py --work-dir /scratch/rehearsal --sites 1 --keep

In a throwaway copy of the repository under --work-dir, runs `snakemake --cores 2 --configfile
config/rehearsal.yaml` (BBBC021's own plates, wells and file names at 1280x1024, the real
geometry, a tiny backbone on CPU; docs/demo.md) once per `data.demo.sites_per_well` value, one
size after the other (each size's outputs are removed before the next starts, unless --keep),
then `snakemake -n` of the default config.yaml pointed at that size's images (the plan of a real
run, including the start-up check of every raw TIFF's size and date in data/raw_images.tsv).

Per stage it prints wall time and CPU time (Snakemake's `benchmark:` files and the timing lines
`workflow_scripts.timed` writes into the data-stage logs), per-epoch wall time (training's
log.jsonl, the extraction logs, the evaluation benchmark files), peak memory and the disk its
outputs take; then, for two sizes, each figure's ratio divided by the ratio of the work (fields;
treated fields for training), so 1.0 is linear growth. Peak memory is sampled here every
--interval s from /proc/<pid>/smaps_rollup for every process of a job (DataLoader workers
included), proportional set sizes summed over the processes, so pages a forked worker shares
with its parent count once: `private` = anonymous and shared memory (Pss_Anon + Pss_Shmem: the
DataLoader's batches travel in shared memory), what a job must be given;
`mapped` = mapped file pages (Pss_File: the memory-mapped image cache, libraries), which the
kernel can reclaim. Snakemake's max_rss (and SLURM's MaxRSS where it sums processes) adds up
every process's whole Rss: shared pages count once per process there.

It refuses a size whose images and cache would leave less than --min-free-gb on the disk.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
import psutil
import yaml
from repo_copy import copy_repo

from workflow_scripts.data import demo_design, demo_official
from workflow_scripts.timed import read_timing

REPO = Path(__file__).resolve().parents[1]
CHANNELS = ["DAPI", "Tubulin", "Actin"]
RAW_SHAPE = (1024, 1280)
CACHE_SHAPE = (512, 640)
TIFF_OVERHEAD = 8192  # bytes of header per TIFF, generously
MB = 2**20
GB = 2**30
# stage per CLI module a job runs (`python -m workflow_scripts.<module>`)
STAGES = {
    "data.demo": "generate rehearsal data",
    "data.metadata": "metadata",
    "data.manifest": "metadata",
    "data.validate": "validation",
    "data.cache": "illumination + cache",
    "train.cli": "training",
    "evaluate.extract": "extraction",
    "evaluate.attention": "attention maps",
    "evaluate.combine": "combine channels",
    "evaluate.evaluate": "evaluation",
    "summary.cli": "summary",
}
STAGE_ORDER = list(dict.fromkeys(STAGES.values())) + ["snakemake -n (default config)"]
# timed data-stage rules: their logs end with a `benchmark:` line
TIMED_LOGS = {
    "generate rehearsal data": ["generate_demo_data.log"],
    "metadata": ["prepare_metadata.log"],
    "validation": ["validate_images.log"],
    "illumination + cache": ["build_image_cache.log"],
}
# rules with `benchmark:` files, under <output_dir>/benchmarks/
BENCHMARK_GLOBS = {
    "training": ["train/*/*.tsv"],
    "extraction": ["extract/*/*/*.tsv"],
    "attention maps": ["attention/*/*.tsv"],
    "combine channels": ["combine/*/*.tsv"],
    "evaluation": ["evaluate/*/*/*.tsv"],
    "summary": ["summarize.tsv"],
}
# folders whose size is a stage's output (resume/: training's resume states)
OUTPUT_DIRS = {
    "generate rehearsal data": ["demo_data"],
    "metadata": ["data/images_prepared.parquet", "data/raw_images.tsv"],
    "validation": ["data/images.parquet", "data/validation_report.json"],
    "illumination + cache": ["cache"],
    "training": ["train", "resume"],
    "extraction": ["features"],
    "attention maps": ["attention"],
    "evaluation": ["eval"],
    "summary": ["summary"],
}
MODULE = re.compile(r"-m (workflow_scripts\.[\w.]+)")
EXTRACTED = re.compile(r"^epoch (\d+): extracted (\d+) images .* in ([\d.]+) s", re.M)


# ------------------------------------------------------------------ memory sampling
def _memory_kb(pid: int) -> dict[str, int]:
    """Rss, Pss_Anon, Pss_File, Pss_Shmem of a process (kB, /proc/<pid>/smaps_rollup)."""
    values = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss_Anon", "Pss_File", "Pss_Shmem"):
                    values[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return values


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    """Direct children (of every thread: Snakemake starts jobs from a thread pool)."""
    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.Error:
        return []


class MemorySampler(threading.Thread):
    """Peak memory per (job, CLI module) of every process below `root` (a Snakemake run).

    A job is a child of the Snakemake process (the shell running a rule's command); a process's
    module is the last `-m workflow_scripts.X` of its command line other than `timed`, or its
    parent's (DataLoader workers). Per (job, module), at each sample: the sum over its processes
    of the proportional private memory (Pss_Anon + Pss_Shmem, the loader's batches in shared
    memory) and mapped file memory (Pss_File): pages shared between processes, as a forked
    worker shares its parent's, count once in the sum; and the largest process's Rss. The
    peaks are kept."""

    def __init__(self, root: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.stop = threading.Event()
        self.peaks: dict[tuple[int, str], dict[str, int]] = defaultdict(
            lambda: {"anon_kb": 0, "file_kb": 0, "largest_kb": 0}
        )
        self.root_peak_kb = 0

    @staticmethod
    def _module(pid: int, parent_module: str | None) -> str | None:
        # read each time: a shell may exec its last command, keeping its pid
        cmdline = _cmdline(pid)
        if cmdline.startswith(("/bin/sh", "/bin/bash", "/usr/bin/bash", "bash", "sh ")):
            return parent_module  # the rule's shell: its command line names every module
        found = [m for m in MODULE.findall(cmdline) if m != "workflow_scripts.timed"]
        return found[-1].removeprefix("workflow_scripts.") if found else parent_module

    def sample(self) -> None:
        self.root_peak_kb = max(self.root_peak_kb, _memory_kb(self.root).get("Pss_Anon", 0))
        current: dict[tuple[int, str], dict[str, int]] = defaultdict(
            lambda: {"anon_kb": 0, "file_kb": 0, "largest_kb": 0}
        )
        for job in _children(self.root):
            pending = [(job, None)]
            while pending:
                pid, parent_module = pending.pop()
                module = self._module(pid, parent_module)
                memory = _memory_kb(pid)
                if module is not None and memory:
                    entry = current[(job, module)]
                    # shared memory (DataLoader batches in /dev/shm) cannot be dropped: private
                    entry["anon_kb"] += memory.get("Pss_Anon", 0) + memory.get("Pss_Shmem", 0)
                    entry["file_kb"] += memory.get("Pss_File", 0)
                    entry["largest_kb"] = max(entry["largest_kb"], memory.get("Rss", 0))
                pending += [(child, module) for child in _children(pid)]
        for key, entry in current.items():
            peak = self.peaks[key]
            for name, value in entry.items():
                peak[name] = max(peak[name], value)

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)

    def per_stage(self) -> dict[str, dict[str, float]]:
        """Per stage: the largest job's peaks (MB) and the number of jobs seen."""
        stages: dict[str, dict[str, float]] = {}
        for (_job, module), peak in self.peaks.items():
            stage = STAGES.get(module)
            if stage is None:
                continue
            entry = stages.setdefault(
                stage, {"anon_mb": 0.0, "file_mb": 0.0, "largest_mb": 0.0, "jobs": 0}
            )
            entry["anon_mb"] = max(entry["anon_mb"], peak["anon_kb"] / 1024)
            entry["file_mb"] = max(entry["file_mb"], peak["file_kb"] / 1024)
            entry["largest_mb"] = max(entry["largest_mb"], peak["largest_kb"] / 1024)
            entry["jobs"] += 1
        return stages


# ------------------------------------------------------------------ one size
def demo_settings(sites: int, plates: list[str] | None) -> dict:
    """config/rehearsal.yaml's data.demo at `sites` sites per well (and only `plates`)."""
    demo = yaml.safe_load((REPO / "config" / "rehearsal.yaml").read_text())["data"]["demo"]
    return {**demo, "sites_per_well": sites, **({"plates": plates} if plates else {})}


def fields_of(demo: dict) -> tuple[int, int]:
    """(fields, treated fields) the rehearsal renders with these data.demo settings."""
    official = yaml.safe_load((REPO / "config.yaml").read_text())["data"]["official"]
    layout, _ = demo_official.official_layout(
        REPO / official["image_table"],
        REPO / official["moa_table"],
        demo_design.settings_with_defaults(demo),
        CHANNELS,
    )
    return len(layout), int((layout["compound"] != "DMSO").sum())


def needed_bytes(fields: int) -> int:
    raw = fields * len(CHANNELS) * (RAW_SHAPE[0] * RAW_SHAPE[1] * 2 + TIFF_OVERHEAD)
    cache = fields * len(CHANNELS) * CACHE_SHAPE[0] * CACHE_SHAPE[1] * 2
    return raw + cache


def disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            file = Path(root, name)
            if not file.is_symlink():
                total += file.stat().st_size
    return total


def run_snakemake(workdir: Path, args: list[str], log: Path, interval: float) -> dict:
    """Run Snakemake, sampling its processes' memory; returns wall s and the sampler."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    with open(log, "w") as fh:
        process = subprocess.Popen(
            [sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env, stdout=fh, stderr=fh
        )
        sampler = MemorySampler(process.pid, interval)
        sampler.start()
        status = process.wait()
        sampler.stop.set()
        sampler.join()
    if status != 0:
        sys.exit(f"snakemake {' '.join(args)} failed ({status}); see {log}")
    return {"wall_s": time.perf_counter() - start, "sampler": sampler}


def timings(out: Path) -> dict[str, dict]:
    """Per stage: wall s and CPU s summed over its jobs, their number, and the largest job's
    max_rss as Snakemake or workflow_scripts.timed recorded it."""
    stages: dict[str, dict] = {}
    for stage, logs in TIMED_LOGS.items():
        for name in logs:
            timing = read_timing((out / "logs" / name).read_text())
            entry = stages.setdefault(stage, {"s": 0.0, "cpu_s": 0.0, "jobs": 0, "max_rss_mb": 0})
            entry["s"] += timing["s"]
            entry["cpu_s"] += timing["cpu_time"]
            entry["jobs"] += 1
            entry["max_rss_mb"] = max(entry["max_rss_mb"], timing["max_rss"])
    for stage, patterns in BENCHMARK_GLOBS.items():
        for pattern in patterns:
            for tsv in sorted((out / "benchmarks").glob(pattern)):
                row = pd.read_csv(tsv, sep="\t").iloc[-1]
                entry = stages.setdefault(
                    stage, {"s": 0.0, "cpu_s": 0.0, "jobs": 0, "max_rss_mb": 0}
                )
                entry["s"] += float(row["s"])
                entry["cpu_s"] += float(row["cpu_time"])
                entry["jobs"] += 1
                entry["max_rss_mb"] = max(entry["max_rss_mb"], float(row["max_rss"]))
    return stages


def per_epoch(out: Path) -> dict[str, float]:
    """Wall s of one epoch of the experiment (all channels): training (log.jsonl, epochs
    averaged), extraction (the extract logs' per-epoch lines), evaluation (benchmark files)."""
    training = 0.0
    for log in (out / "train").glob("*/*/log.jsonl"):
        epochs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        training += sum(e["wall_time_s"] for e in epochs) / len(epochs)
    extraction: dict[int, float] = defaultdict(float)
    for log in (out / "logs" / "extract").glob("*/*/*.log"):
        for epoch, _n, seconds in EXTRACTED.findall(log.read_text()):
            extraction[int(epoch)] += float(seconds)
    evaluation: dict[str, float] = defaultdict(float)
    for tsv in (out / "benchmarks" / "evaluate").glob("*/*/epoch_*.tsv"):
        evaluation[tsv.stem] += float(pd.read_csv(tsv, sep="\t")["s"].iloc[-1])
    return {
        "training": training,
        "extraction": sum(extraction.values()) / max(len(extraction), 1),
        "evaluation": sum(evaluation.values()) / max(len(evaluation), 1),
    }


def plan_default_config(workdir: Path, out: Path) -> dict:
    """`snakemake -n` of config.yaml (2 architectures, 200 epochs) on this size's images, in its
    output_dir: the start-up re-stats every raw TIFF of data/raw_images.tsv."""
    demo_data = out / "demo_data"
    overlay = workdir / f"plan_{out.name}.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "output_dir": str(out),
                "data": {
                    "source": "official",
                    "official": {
                        "image_table": str(demo_data / "BBBC021_v1_image.csv"),
                        "moa_table": str(demo_data / "BBBC021_v1_moa.csv"),
                        "image_root": str(demo_data / "images"),
                    },
                },
            }
        )
    )
    log = out.parent / f"plan_{out.name}.log"
    command = [sys.executable, "-m", "workflow_scripts.timed", sys.executable, "-m", "snakemake"]
    command += ["-n", "--cores", "2", "--configfile", str(overlay)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as fh:
        status = subprocess.run(command, cwd=workdir, env=env, stdout=fh, stderr=fh).returncode
    text = log.read_text()
    if status != 0:
        sys.exit(f"snakemake -n of the default config failed; see {log}")
    timing = read_timing(text)
    jobs = re.search(r"^total\s+(\d+)", text, re.M)
    return {
        "s": timing["s"],
        "cpu_s": timing["cpu_time"],
        "max_rss_mb": timing["max_rss"],
        "jobs": int(jobs.group(1)) if jobs else None,
    }


def run_size(workdir: Path, work_root: Path, sites: int, args: argparse.Namespace) -> dict:
    demo = demo_settings(sites, args.plates)
    fields, treated = fields_of(demo)
    needed = needed_bytes(fields)
    free = shutil.disk_usage(work_root).free
    if free - needed < args.min_free_gb * GB:
        sys.exit(
            f"sites_per_well {sites}: images and cache need {needed / GB:.1f} GB, "
            f"{free / GB:.1f} GB are free and {args.min_free_gb} GB must stay free; "
            "choose fewer sites or another --work-dir"
        )
    out = work_root / f"sites{sites}"
    shutil.rmtree(out, ignore_errors=True)
    overlay = workdir / f"sites{sites}.yaml"
    overlay.write_text(yaml.safe_dump({"output_dir": str(out), "data": {"demo": demo}}))
    print(f"sites_per_well {sites}: {fields} fields ({treated} treated) -> {out}", flush=True)
    log = work_root / f"sites{sites}.log"
    cores = ["--cores", str(args.cores)]
    run = run_snakemake(
        workdir, [*cores, "--configfile", "config/rehearsal.yaml", str(overlay)], log, args.interval
    )
    stages = timings(out)
    stages["snakemake -n (default config)"] = plan_default_config(workdir, out)
    memory = run["sampler"].per_stage()
    for stage, entry in stages.items():
        entry.update({f"peak_{k}": v for k, v in memory.get(stage, {}).items() if k != "jobs"})
        paths = OUTPUT_DIRS.get(stage, [])
        entry["disk_mb"] = sum(disk_bytes(out / p) for p in paths if (out / p).exists()) / MB
    epoch = per_epoch(out)
    for stage, seconds in epoch.items():
        stages[stage]["epoch_s"] = seconds
    result = {
        "sites_per_well": sites,
        "fields": fields,
        "treated": treated,
        "wall_s": run["wall_s"],
        "snakemake_peak_anon_mb": run["sampler"].root_peak_kb / 1024,
        "disk_mb": disk_bytes(out) / MB,
        "stages": stages,
    }
    if not args.keep:
        shutil.rmtree(out)
    return result


# ------------------------------------------------------------------ report
def print_size(result: dict) -> None:
    print(
        f"\nsites_per_well {result['sites_per_well']}: {result['fields']} fields "
        f"({result['treated']} treated), whole run {result['wall_s']:.0f} s, "
        f"{result['disk_mb'] / 1024:.2f} GB on disk, "
        f"Snakemake {result['snakemake_peak_anon_mb']:.0f} MB"
    )
    header = (
        f"{'stage':30} {'jobs':>4} {'wall s':>8} {'CPU s':>8} {'epoch s':>8} "
        f"{'private':>8} {'mapped':>8} {'max_rss':>8} {'disk MB':>9}"
    )
    print(header)
    for stage in STAGE_ORDER:
        e = result["stages"].get(stage)
        if e is None:
            continue
        epoch = f"{e['epoch_s']:8.1f}" if "epoch_s" in e else f"{'':8}"
        print(
            f"{stage:30} {e.get('jobs') or 0:4d} {e['s']:8.1f} {e['cpu_s']:8.1f} {epoch} "
            f"{e.get('peak_anon_mb', 0):8.0f} {e.get('peak_file_mb', 0):8.0f} "
            f"{e.get('max_rss_mb', 0):8.0f} {e.get('disk_mb', 0):9.1f}"
        )


def print_growth(small: dict, large: dict) -> None:
    """Each figure's ratio (large / small) over the ratio of the work: 1.0 = linear."""
    work = large["fields"] / small["fields"]
    treated = large["treated"] / small["treated"]
    print(
        f"\ngrowth from sites_per_well {small['sites_per_well']} to {large['sites_per_well']}: "
        f"work x{work:.2f} (fields), x{treated:.2f} (treated fields: training); "
        "figures = ratio / work ratio (1.0: linear; memory: plain ratio)"
    )
    columns = ("wall", "CPU", "epoch", "priv.", "mapped", "disk")
    print(f"{'stage':30} " + " ".join(f"{c:>6}" for c in columns))
    for stage in STAGE_ORDER:
        a, b = small["stages"].get(stage), large["stages"].get(stage)
        if a is None or b is None:
            continue
        scale = treated if stage == "training" else work

        def ratio(key: str, per_work: bool = True, a=a, b=b, scale=scale) -> str:
            if not a.get(key):
                return f"{'-':>6}"
            value = b.get(key, 0) / a[key]
            return f"{value / scale if per_work else value:6.2f}"

        print(
            f"{stage:30} {ratio('s')} {ratio('cpu_s')} {ratio('epoch_s')} "
            f"{ratio('peak_anon_mb', False)} {ratio('peak_file_mb', False)} {ratio('disk_mb')}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", required=True, help="scratch folder (tens of GB)")
    parser.add_argument(
        "--sites", type=int, nargs="+", default=[1, 4], help="sites_per_well values (1-4)"
    )
    parser.add_argument("--plates", nargs="+", help="only these plates (a quick trial)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.5, help="memory sampling, s")
    parser.add_argument("--min-free-gb", type=float, default=15.0)
    parser.add_argument("--keep", action="store_true", help="keep each size's output folder")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    work_root = Path(args.work_dir).resolve()
    work_root.mkdir(parents=True, exist_ok=True)
    workdir = work_root / "repo"
    shutil.rmtree(workdir, ignore_errors=True)
    copy_repo(workdir)
    results = []
    for sites in args.sites:
        results.append(run_size(workdir, work_root, sites, args))
        print_size(results[-1])
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    for small, large in zip(results, results[1:]):
        print_growth(small, large)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
