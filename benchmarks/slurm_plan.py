"""How many SLURM submissions a run would make: `snakemake --dry-run --profile slurm`, counted.

A submission is a group job (all its member jobs in one sbatch) or a job of a rule that is
neither in a group nor a local rule (`localrules:` in rules/*.smk: those run on the login node).
Prints one row per kind of submission and the total, e.g. for the default config with a stand-in
image folder (the dry run only checks that it exists), given as an overlay file because
Snakemake's `--config` refuses dotted keys such as `data.official.image_root`:

    mkdir -p /tmp/images
    printf 'output_dir: /tmp/plan\\ndata: {official: {image_root: /tmp/images}}\\n' > /tmp/plan.yaml
    python benchmarks/slurm_plan.py --configfile /tmp/plan.yaml

Extra arguments go to Snakemake (`--configfile config/demo.yaml`, `--config ...`).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GROUP_HEADER = re.compile(r"Group job (\S+) \(jobs in lexicogr\. order\):")
GROUPED_JOB = re.compile(r"^    rule (\S+):$")  # a member, indented under its group's header
JOB = re.compile(r"^rule (\S+):$")


def parse_plan(dry_run: str) -> tuple[dict[str, list[str]], list[str]]:
    """({group id: its member jobs' rules}, [rule of every job outside a group]) of a dry run's
    log (Snakemake 9 prints each group job's header, then its members indented)."""
    groups: dict[str, list[str]] = {}
    ungrouped: list[str] = []
    group = None
    for line in dry_run.splitlines():
        if header := GROUP_HEADER.search(line):
            group = header.group(1)
            groups[group] = []
        elif (member := GROUPED_JOB.match(line)) and group is not None:
            groups[group].append(member.group(1))
        elif job := JOB.match(line):
            group = None
            ungrouped.append(job.group(1))
    return groups, ungrouped


def local_rules(repo: Path = REPO) -> set[str]:
    """Rule names listed under `localrules:` in the workflow's rule files."""
    names: set[str] = set()
    for path in sorted((repo / "rules").glob("*.smk")):
        for block in re.findall(
            r"^\s*localrules:\s*\n((?:\s+\w+,?\s*\n)+)", path.read_text(), re.M
        ):
            names.update(re.findall(r"\w+", block))
    return names


def submissions(dry_run: str, local: set[str]) -> Counter:
    """Submissions per kind: a group's id up to its first '_' (extract, evaluate) or a rule."""
    groups, ungrouped = parse_plan(dry_run)
    counts = Counter(group_id.split("_", 1)[0] + " (group)" for group_id in groups)
    counts.update(rule for rule in ungrouped if rule not in local and rule != "all")
    return counts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cmd = [sys.executable, "-m", "snakemake", "--dry-run", "--profile", "slurm", *argv]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:], file=sys.stderr)
        return result.returncode
    counts = submissions(result.stdout + result.stderr, local_rules())
    width = max(len(kind) for kind in counts) if counts else 10
    for kind, n in sorted(counts.items()):
        print(f"{kind:<{width}}  {n:>5}")
    print(f"{'total':<{width}}  {sum(counts.values()):>5}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
