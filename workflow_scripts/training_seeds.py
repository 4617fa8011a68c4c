"""Training seeds (`train.seeds`): which fine-tunings each architecture repeats, and where.

`train.seeds` lists the seeds every (architecture, channel) is fine-tuned with; absent, it is
[train.seed]: one run, as without the key. The run with `train.seed` keeps the paths of a single
run (train/{arch}/{channel}/, features/{arch}/{channel}/, eval/{arch}/{channel}/epoch_NNNN/), so
listing more seeds reruns nothing that exists; every other seed S writes one folder deeper,
`seed_S/` below the channel (train/{arch}/{channel}/seed_S/, resume/{arch}/{channel}/seed_S/,
features/{arch}/{channel}/seed_S/, eval/{arch}/{channel}/seed_S/epoch_NNNN/), and its
evaluations are labelled arch/channel/seed_S/NNNN. A training job's settings never hold `seeds`:
they are one run's settings, `seed` that run's seed (so the first seed's job, its params and its
checkpoints' settings digest are those of a single run).

Imported by the rules and the configuration check only (not by the training or evaluation code,
whose rules list their imports as code inputs).
"""

from __future__ import annotations

from workflow_scripts.errors import InputError

SEEDS_KEY = "seeds"


def seeds(settings: dict) -> list[int]:
    """All seeds of an architecture's train settings, train.seed first."""
    listed = settings.get(SEEDS_KEY) or [settings["seed"]]
    return [settings["seed"], *(s for s in listed if s != settings["seed"])]


def extra_seeds(settings: dict) -> list[int]:
    """The seeds after the first: each a fine-tuning under seed_S/ folders."""
    return seeds(settings)[1:]


def run_settings(settings: dict, seed: int | None = None) -> dict:
    """The settings of one fine-tuning: without `seeds`, `seed` = `seed` (default: train.seed)."""
    single = {key: value for key, value in settings.items() if key != SEEDS_KEY}
    if seed is not None:
        single["seed"] = seed
    return single


def check(settings: dict, where: str) -> None:
    """train.seeds, when given, includes train.seed: that run keeps the single-run paths."""
    listed = settings.get(SEEDS_KEY)
    if listed is not None and settings["seed"] not in listed:
        raise InputError(
            f"config key 'train.seeds'{where}: {listed} does not include train.seed "
            f"({settings['seed']}), the seed whose run keeps the paths of a single run; add it "
            "(or set train.seed to the first of them)"
        )
