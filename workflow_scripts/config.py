"""config.yaml: load with overlays, check against the schema, and derive per-job settings.

The Snakefile and every CLI read the configuration through this module, so a setting means
the same thing everywhere and each job gets exactly the settings its output depends on.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from workflow_scripts.errors import InputError

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
SCHEMA_PATH = REPO_DIR / "schemas" / "config.schema.yaml"
PER_CHANNEL_MODE = "per_channel"
RGB = "rgb"
COMBINED = "combined"


class _DuplicateKey(yaml.MarkedYAMLError):
    """A mapping names a key twice (PyYAML keeps the last silently)."""


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` overrides on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                break
            if first is not key_node.start_mark:
                raise _DuplicateKey(
                    problem=(
                        f"key '{key}' is given twice (first on line {first.line + 1}); YAML would "
                        "silently keep only the last one"
                    ),
                    problem_mark=key_node.start_mark,
                )
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content; a syntax error or a key given twice in a mapping is an InputError
    naming the file and line (`config.yaml: line 12, column 3: ...`)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.load(fh, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = err.problem or err.context or "not valid YAML"
        if "'\\t'" in problem:
            problem = "a tab character; YAML indents with spaces only"
        raise InputError(f"{path}: {where}{problem}") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML: {err}") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not a text file ({err})") from None


def known_models() -> list[str]:
    """timm pretrained names of the DINOv3 family, as listed in dinov3_models.yaml."""
    return list(read_yaml(PACKAGE_DIR / "dinov3_models.yaml")["models"])


def deep_merge(base: dict, override: dict) -> dict:
    """Recursive dict merge; lists and scalars in `override` replace those in `base`."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load(paths: Iterable[str | Path], *, schema: bool = True) -> dict:
    """Load config files in order (later ones overlay earlier ones) and check the result
    against the JSON schema; schema=False skips it (jsonschema is then not imported): for the
    benchmarks, which must start on a bare GPU node. What the values mean together is
    config_check.py's (the Snakefile and the planner CLI run it)."""
    config: dict = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"config file not found: {path}")
        loaded = read_yaml(path) or {}
        if not isinstance(loaded, dict):
            raise InputError(f"{path}: top level must be a mapping")
        config = deep_merge(config, loaded)
    if schema:
        check_schema(config)
    return config


def has_schema_checker() -> bool:
    """Whether jsonschema imports (a bare GPU node running benchmarks/ may lack it)."""
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        return False
    return True


def check_schema(config: dict) -> None:
    """The JSON schema; the first error names its key (`config key 'train.optimizer.lr': ...`).
    The Snakefile calls this before Snakemake's own validation, whose messages name no key."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(read_yaml(SCHEMA_PATH))
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
        raise InputError(f"config key '{key}': {err.message}")


def baselines(config: dict) -> list[dict]:
    """`baselines` entries with their defaults; `{output_dir}` in a table path is output_dir
    (a table a rule of this workflow writes, as the demo's hand-crafted profiles)."""
    return [
        {
            "feature_columns": "^feat_",
            "metadata_map": {},
            **entry,
            "table": entry["table"].replace("{output_dir}", config["output_dir"]),
        }
        for entry in config.get("baselines") or []
    ]


def architecture(config: dict, name: str) -> dict:
    for entry in config["architectures"]:
        if entry["name"] == name:
            return {"weights": "hub", "gpus": 1, "model_kwargs": {}, **entry}
    raise InputError(f"architecture '{name}' is not in config key 'architectures'")


def architecture_names(config: dict) -> list[str]:
    return [entry["name"] for entry in config["architectures"]]


def train_settings(config: dict, arch_name: str) -> dict:
    """The train section with this architecture's overrides applied (only its own)."""
    return deep_merge(config["train"], architecture(config, arch_name).get("train", {}))


def training_channels(config: dict) -> list[str]:
    """Channel wildcards that get a training job: each data channel and/or 'rgb'."""
    channels: list[str] = []
    if PER_CHANNEL_MODE in config["channel_modes"]:
        channels += list(config["data"]["channels"])
    if RGB in config["channel_modes"]:
        channels.append(RGB)
    return channels


def evaluation_channels(config: dict) -> list[str]:
    """Training channels plus 'combined' (concatenated per-channel features) when it exists."""
    channels = training_channels(config)
    if PER_CHANNEL_MODE in config["channel_modes"] and len(config["data"]["channels"]) > 1:
        channels.append(COMBINED)
    return channels


def image_channels(config: dict, channel: str) -> list[str]:
    """Raw channels that feed a training/extraction channel wildcard."""
    if channel in (RGB, COMBINED):
        return list(config["data"]["channels"])
    return [channel]


def evaluated_epochs(settings: dict, include_pretrained: bool = False) -> list[int]:
    """Epochs with a checkpoint: every `checkpoint_every` and the last; 0 = pretrained."""
    last = settings["epochs"]
    epochs = set(range(settings["checkpoint_every"], last + 1, settings["checkpoint_every"]))
    epochs.add(last)
    if include_pretrained:
        epochs.add(0)
    return sorted(epochs)


def scoring_settings(config: dict) -> dict:
    """What scoring a feature table depends on (the evaluate rules' --settings): the same for
    the runs and the baselines."""
    return {
        k: config["evaluate"].get(k, {}) for k in ("normalization", "tvn", "aggregation", "map")
    }


def digest(obj: Any) -> str:
    """Stable short hash of JSON-able settings (recorded beside every checkpoint)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
