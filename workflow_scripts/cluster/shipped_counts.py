"""The meta-device counts the repository ships (workflow_scripts/meta_counts.json), so that a
fresh clone plans its first configurations without importing torch (count_cache.py).

    python -m workflow_scripts.cluster.shipped_counts --write   # after editing counting code
    python -m workflow_scripts.cluster.shipped_counts --check   # exit 1 unless current

Shipped: every count that planning these asks for, counted afresh (no cache):
- config.yaml as `snakemake -n` plans it (the start-up fit check, each training job's
  strategy, each extraction job's host memory);
- the planner CLI on config.yaml with --all-models, also with --activation-checkpointing true;
- the planner CLI on config.yaml + config/vit7b.yaml.
An entry holds its key (inputs, torch/timm versions, a digest of the counting code): editing
that code or changing a pinned version leaves the file's entries unused until it is rewritten;
tests/test_count_cache.py fails then, naming this command.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys

from workflow_scripts import config as config_module
from workflow_scripts import config_check, count_cache
from workflow_scripts.atomic import write_text
from workflow_scripts.cluster import memory_plan, resources
from workflow_scripts.errors import cli

CLI_RUNS = (
    ["--all-models"],
    ["--all-models", "--activation-checkpointing", "true"],
    ["--configfile", str(config_module.REPO_DIR / "config" / "vit7b.yaml")],
)


def plan_default_config() -> None:
    """What `snakemake -n` of config.yaml asks the planner."""
    config = config_module.load([config_module.REPO_DIR / "config.yaml"], schema=False)
    config_check.gpu_memory(config)
    for arch in config_module.architecture_names(config):
        resources.training_strategy(config, arch)
        resources.extract_mem_mb(config, arch)


def count_all() -> dict[str, dict]:
    """Every shipped entry, counted afresh, by file name."""
    with count_cache.recording() as entries:
        plan_default_config()
        for argv in CLI_RUNS:
            with contextlib.redirect_stdout(io.StringIO()):
                memory_plan.main(argv)
        return dict(sorted(entries.items()))


def file_text(entries: dict[str, dict]) -> str:
    """One entry per line: a rewrite's diff shows which counts changed."""
    lines = [
        f"{json.dumps(name)}: {json.dumps(entry, sort_keys=True, separators=(',', ':'))}"
        for name, entry in entries.items()
    ]
    return '{"entries": {\n' + ",\n".join(lines) + "\n}}\n"


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="count afresh and write the file")
    action.add_argument("--check", action="store_true", help="exit 1 unless the file is current")
    args = parser.parse_args(argv)
    entries = count_all()
    if args.write:
        write_text(count_cache.SHIPPED, file_text(entries))
        print(f"{count_cache.SHIPPED}: {len(entries)} entries")
        return 0
    shipped = count_cache.shipped_entries()
    stale = sorted(name for name, entry in entries.items() if shipped.get(name) != entry)
    if stale:
        print(
            f"{count_cache.SHIPPED}: {len(stale)} of {len(entries)} entries missing or different "
            f"(e.g. {stale[0]}); run python -m workflow_scripts.cluster.shipped_counts --write",
            file=sys.stderr,
        )
        return 1
    print(f"{count_cache.SHIPPED}: all {len(entries)} entries current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
