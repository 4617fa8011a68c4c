"""A saved training state is continued only when nothing its weights depend on has changed."""

import json

import pandas as pd
import pytest

from workflow_scripts.train.resume_key import resume_key, world_size_decision


@pytest.fixture
def cache(tmp_path):
    (tmp_path / "meta.json").write_text(
        json.dumps(
            {"settings_digest": "abc", "n_images": 3, "height": 8, "width": 8, "channels": ["DAPI"]}
        )
    )
    pd.DataFrame({"image_id": ["p/A01/s1", "p/A01/s2", "p/A02/s1"]}).to_parquet(
        tmp_path / "images.parquet"
    )
    return tmp_path


def key(cache, **overrides):
    args = dict(
        arch="vit_small_patch16_dinov3.lvd1689m",
        channel="DAPI",
        settings={"epochs": 4, "num_workers": 0},
        model_kwargs={},
        weights="none",
        cache_dir=cache,
    )
    return resume_key(**{**args, **overrides})


def test_same_inputs_same_key_and_result_neutral_settings_ignored(cache):
    assert key(cache) == key(cache)
    assert key(cache, settings={"epochs": 4, "num_workers": 8}) == key(cache)
    opted_in = {"epochs": 4, "num_workers": 0, "resume_at_other_world_size": True}
    assert key(cache, settings=opted_in) == key(cache)


def test_changed_training_inputs_change_the_key(cache, tmp_path):
    base = key(cache)
    assert key(cache, settings={"epochs": 5, "num_workers": 0}) != base
    weak = {"epochs": 4, "num_workers": 0, "weak_label": "compound"}
    assert key(cache, settings=weak) != base  # train.weak_label is a train setting like any
    assert key(cache, settings={**weak, "weak_label": "moa"}) != key(cache, settings=weak)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    first = key(cache, weights=str(weights))
    weights.write_bytes(b"xy")  # re-fetched / replaced weights file
    assert key(cache, weights=str(weights)) != first


def test_rebuilt_image_cache_changes_the_key(cache):
    base = key(cache)
    meta = json.loads((cache / "meta.json").read_text())
    (cache / "meta.json").write_text(json.dumps({**meta, "settings_digest": "def"}))
    assert key(cache) != base
    (cache / "meta.json").write_text(json.dumps(meta))
    pd.DataFrame({"image_id": ["p/A02/s1", "p/A01/s1", "p/A01/s2"]}).to_parquet(
        cache / "images.parquet"
    )
    assert key(cache) != base  # same images, other order: rows of the arrays changed meaning


def test_world_size_change_is_refused_unless_opted_in():
    assert world_size_decision(2, 2, allowed=False) is None
    assert world_size_decision(2, 1, allowed=True) is None
    reason = world_size_decision(2, 1, allowed=False)
    assert "saved by 2 process(es)" in reason and "this job has 1" in reason
    assert "train.resume_at_other_world_size: true" in reason
