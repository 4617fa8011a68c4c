"""Several epochs in one extraction call (the cluster rule extracts every trained epoch of one
(architecture, channel) in one job): the same files as one call per epoch, the cache loaded once,
argument pairing checked, and all or nothing on errors."""

import json

import pandas as pd
import pytest
import torch
from test_eval_extract import ARCH, SETTINGS, TINY, cache_dir, tiny_model  # noqa: F401 (fixture)

from workflow_scripts.evaluate import extract
from workflow_scripts.model.checkpoint import save_backbone_checkpoint


def checkpoint(folder, epoch: int, channel: str = "rgb"):
    """A tiny backbone checkpoint whose weights differ per epoch."""
    model = tiny_model()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * epoch)
    meta = {
        "arch": ARCH,
        "channel": channel,
        "epoch": epoch,
        "config_digest": "x",
        "model_kwargs": TINY,
        "in_chans": 3,
        "train_settings": {"input_standardization": "none", "interpolation": "bicubic"},
    }
    return str(save_backbone_checkpoint(folder, model, meta))


def run(cache_dir, epochs, checkpoints, outs, *extra):  # noqa: F811 (fixture as argument)
    return extract.main(
        [
            "--arch",
            ARCH,
            "--channel",
            "rgb",
            "--cache-dir",
            str(cache_dir),
            "--model-kwargs",
            json.dumps(TINY),
            "--settings",
            json.dumps(SETTINGS),
            "--batch-size",
            "16",
            "--epoch",
            *map(str, epochs),
            "--checkpoint",
            *checkpoints,
            "--out",
            *map(str, outs),
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    return {epoch: checkpoint(folder, epoch) for epoch in (1, 2, 3)}


def test_one_call_writes_what_one_call_per_epoch_writes(
    cache_dir, checkpoints, tmp_path, monkeypatch
):  # noqa: F811
    for epoch in (1, 2, 3):  # the oracle: today's one-epoch calls
        assert (
            run(cache_dir, [epoch], [checkpoints[epoch]], [tmp_path / f"single_{epoch}.parquet"])
            == 0
        )
    cache_loads = []
    real_load_cache = extract.load_cache
    monkeypatch.setattr(
        extract, "load_cache", lambda *a: cache_loads.append(a) or real_load_cache(*a)
    )
    outs = [tmp_path / f"multi_{epoch}.parquet" for epoch in (1, 2, 3)]
    assert run(cache_dir, [1, 2, 3], [checkpoints[e] for e in (1, 2, 3)], outs) == 0
    for epoch, out in zip((1, 2, 3), outs):
        pd.testing.assert_frame_equal(
            pd.read_parquet(out), pd.read_parquet(tmp_path / f"single_{epoch}.parquet")
        )
    # epochs differ, so a file written for the wrong epoch would not pass the comparison above
    assert not pd.read_parquet(outs[0]).equals(pd.read_parquet(outs[1]))
    # rgb: one look at meta.json for the channel order, then the cache itself, once for 3 epochs
    assert len(cache_loads) == 2


@pytest.mark.parametrize(
    "epochs, n_checkpoints, n_outs, message",
    [
        ([1, 2], 2, 1, "2 --epoch, 2 --checkpoint and 1 --out values"),
        ([1, 2], 1, 2, "2 --epoch, 1 --checkpoint and 2 --out values"),
        ([1, 1], 2, 2, "--epoch: 1 given more than once"),
    ],
)
def test_epochs_checkpoints_and_outputs_must_pair_up(
    cache_dir,
    checkpoints,
    tmp_path,
    capsys,
    epochs,
    n_checkpoints,
    n_outs,
    message,  # noqa: F811
):
    outs = [tmp_path / f"{i}.parquet" for i in range(n_outs)]
    assert run(cache_dir, epochs, [checkpoints[e] for e in (1, 2)][:n_checkpoints], outs) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_same_output_twice_and_several_epochs_from_weights_are_errors(
    cache_dir, checkpoints, tmp_path, capsys
):  # noqa: F811
    out = tmp_path / "x.parquet"
    assert run(cache_dir, [1, 2], [checkpoints[1], checkpoints[2]], [out, out]) == 2
    assert f"--out: {out} given more than once" in capsys.readouterr().err
    assert (
        extract.main(
            [
                "--arch",
                ARCH,
                "--channel",
                "rgb",
                "--cache-dir",
                str(cache_dir),
                "--weights",
                "none",
                "--settings",
                json.dumps(SETTINGS),
                "--epoch",
                "0",
                "1",
                "--out",
                str(out),
                str(out),
            ]
        )
        == 2
    )
    assert "--weights extracts one epoch" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_missing_checkpoint_stops_the_call_before_any_extraction(
    cache_dir, checkpoints, tmp_path, capsys, monkeypatch
):  # noqa: F811
    calls = []
    monkeypatch.setattr(extract, "extract_features", lambda *a, **k: calls.append(1))
    missing = str(tmp_path / "epoch_0009.safetensors")
    outs = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    assert run(cache_dir, [1, 9], [checkpoints[1], missing], outs) == 2
    assert f"checkpoint file not found: {missing}" in capsys.readouterr().err
    assert calls == [] and not any(o.exists() for o in outs)


def test_a_failing_later_epoch_leaves_no_output_of_the_call(
    cache_dir, checkpoints, tmp_path, capsys
):  # noqa: F811
    wrong_channel = checkpoint(tmp_path / "other", 4, channel="DAPI")
    outs = [tmp_path / "out" / "a.parquet", tmp_path / "out" / "b.parquet"]
    assert run(cache_dir, [1, 4], [checkpoints[1], wrong_channel], outs) == 2
    assert "recorded channel 'DAPI', but 'rgb' was asked for" in capsys.readouterr().err
    assert list((tmp_path / "out").iterdir()) == []  # epoch 1 had been written, then removed
