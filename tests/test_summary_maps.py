"""The summary's embedding maps (t-SNE of the scored treatment profiles), attention-map figures
and weak-label marks."""

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from sklearn.manifold import TSNE
from sklearn.preprocessing import normalize
from test_eval_pipeline import synthetic_features, write_settings

from workflow_scripts.errors import InputError
from workflow_scripts.evaluate import evaluate
from workflow_scripts.summary import attention_maps, cli
from workflow_scripts.summary.embedding_maps import perplexity_for


def evaluated_run(root, arch, channel, epoch, seed):
    """An evaluation (metrics.json, predictions.csv, profiles.parquet) of synthetic features."""
    features = root / f"features_{arch}_{channel}_{epoch}.parquet"
    synthetic_features(seed=seed).to_parquet(features)
    out_dir = root / "eval" / arch / channel / f"epoch_{epoch:04d}"
    label = f"{arch}/{channel}/{epoch:04d}"
    status = evaluate.main(
        ["--features", str(features), "--settings", write_settings(), "--out-dir", str(out_dir),
         "--label", label]
    )  # fmt: skip
    assert status == 0
    return out_dir


def validation_report(root):
    path = root / "validation_report.json"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"n_images": 96}))
    return path


def checkpoint_meta(root, arch, channel, weak_label):
    path = root / "train" / arch / channel / "epoch_0005.json"
    path.parent.mkdir(parents=True)
    settings = {"epochs": 5} if weak_label is None else {"epochs": 5, "weak_label": weak_label}
    path.write_text(json.dumps({"arch": arch, "channel": channel, "train_settings": settings}))
    return path


def summarize(root, run_dirs, *extra):
    out_dir = root / "summary"
    status = cli.main(
        ["--metrics", *(str(d / "metrics.json") for d in run_dirs), "--validation-report",
         str(validation_report(root)), "--out-dir", str(out_dir), *extra]
    )  # fmt: skip
    assert status == 0
    return out_dir


def test_map_coordinates_are_sklearns_tsne_of_the_scored_profiles(tmp_path, capsys):
    runs = [evaluated_run(tmp_path, "vit_s", "DAPI", e, seed=e) for e in (0, 5)]
    out_dir = summarize(tmp_path, runs, "--profiles", *(str(d / "profiles.parquet") for d in runs))
    points = pd.read_csv(out_dir / "figures" / "embedding_map_vit_s_DAPI.csv")
    assert (out_dir / "figures" / "embedding_map_vit_s_DAPI.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(points["epoch"].unique()) == [0, 5]
    for run, epoch in zip(runs, (0, 5)):
        shown = points[points["epoch"] == epoch].reset_index(drop=True)
        predictions = pd.read_csv(run / "predictions.csv").query("protocol == 'nsc'")
        # one point per scored treatment
        assert shown["treatment"].tolist() == predictions["treatment"].tolist()
        profiles = pd.read_parquet(run / "profiles.parquet")
        values = profiles.filter(regex="^feat_").to_numpy()
        perplexity = perplexity_for(len(values))
        assert perplexity == 5 and (shown["perplexity"] == perplexity).all()  # 16 treatments
        expected = TSNE(
            n_components=2, perplexity=perplexity, init="pca", method="exact", random_state=0
        ).fit_transform(normalize(values))
        assert np.allclose(shown[["x", "y"]].to_numpy(), expected)
        assert shown["moa"].tolist() == profiles["moa"].tolist()
        assert shown["main_batch"].tolist() == profiles["main_batch"].tolist()
    report = (out_dir / "report.html").read_text()
    assert "Embedding maps (t-SNE of the treatment profiles)" in report
    assert 'alt="embedding_map_vit_s_DAPI.png"' in report and "perplexity 5" in report
    # a profiles file of no listed run is a mistake, named
    status = cli.main(
        ["--metrics", str(runs[0] / "metrics.json"), "--validation-report",
         str(validation_report(tmp_path)), "--out-dir", str(tmp_path / "other"),
         "--profiles", str(runs[1] / "profiles.parquet")]
    )  # fmt: skip
    assert status == 2
    error = capsys.readouterr().err
    assert "epoch_0005/profiles.parquet: a --profiles file must lie beside" in error
    assert not (tmp_path / "other").exists()


def test_perplexity_stays_below_a_third_of_the_treatments():
    assert perplexity_for(103) == 30  # BBBC021
    assert perplexity_for(66) == 21  # the demo
    assert perplexity_for(4) == 1
    for n in range(4, 200):
        assert 3 * perplexity_for(n) < n


def test_weak_labels_from_checkpoints_and_moa_marked_circular(tmp_path):
    runs = [
        evaluated_run(tmp_path, arch, channel, 5, seed=1)
        for arch, channel in (("vit_s", "DAPI"), ("vit_s", "combined"), ("vit_b", "DAPI"))
    ]
    metas = [
        checkpoint_meta(tmp_path, "vit_s", "DAPI", "moa"),
        checkpoint_meta(tmp_path, "vit_b", "DAPI", None),  # before train.weak_label existed
    ]
    out_dir = summarize(tmp_path, runs, "--checkpoint-metas", *map(str, metas))
    table = pd.read_csv(out_dir / "summary.csv").set_index(["arch", "channel"])["weak_label"]
    assert table[("vit_s", "DAPI")] == "MoA (circular)"
    assert table[("vit_s", "combined")] == "MoA (circular)"  # its channels' training
    assert table[("vit_b", "DAPI")] == "none"
    report = (out_dir / "report.html").read_text()
    assert "weak label = MoA (circular)" in report
    assert "<code>vit_s/DAPI</code>, <code>vit_s/combined</code>" in report
    best = pd.read_csv(out_dir / "best_epochs.csv")
    assert set(best.loc[best["arch"] == "vit_s", "weak_label"]) == {"MoA (circular)"}
    # without checkpoint JSONs nothing is claimed
    plain = summarize(tmp_path / "plain", runs)
    assert "weak_label" not in pd.read_csv(plain / "summary.csv")
    assert "weak label = MoA" not in (plain / "report.html").read_text()


def attention_file(path, epochs=(0, 4), heads=3, patch=8, grid=(4, 5)):
    rng = np.random.default_rng(0)
    n_fields = 3
    fields = rng.integers(0, 10000, (n_fields, 1, grid[0] * patch, grid[1] * patch), np.uint16)
    attention = rng.random((len(epochs), n_fields, heads, *grid)).astype(np.float32)
    info = {
        "arch": "vit_s",
        "channel": "DAPI",
        "channels": ["DAPI"],
        "patch": [patch, patch],
        "grid": list(grid),
        "heads": heads,
        "fields": [
            {"image_id": "P1/A01/s1", "moa": "M0", "compound": "a", "concentration": 1.0,
             "is_control": False},
            {"image_id": "P1/A02/s1", "moa": "M1", "compound": "b", "concentration": 0.3,
             "is_control": False},
            {"image_id": "P1/A03/s1", "moa": None, "compound": "DMSO", "concentration": 0.0,
             "is_control": True},
        ],
    }  # fmt: skip
    with open(path, "wb") as fh:
        np.savez_compressed(
            fh, fields=fields, attention=attention, epochs=np.array(epochs), info=json.dumps(info)
        )
    return path


def test_attention_figures_in_the_report(tmp_path):
    runs = [evaluated_run(tmp_path, "vit_s", "DAPI", e, seed=e) for e in (0, 4)]
    maps = attention_file(tmp_path / "maps.npz")
    out_dir = summarize(tmp_path, runs, "--attention-maps", str(maps))
    figures = sorted(p.name for p in (out_dir / "figures").glob("attention*.jpg"))
    assert figures == [
        "attention_heads_vit_s_DAPI_epoch_0000.jpg",
        "attention_heads_vit_s_DAPI_epoch_0004.jpg",
        "attention_vit_s_DAPI.jpg",
    ]
    report = (out_dir / "report.html").read_text()
    assert "Attention maps (ViTs)" in report
    for name in figures:
        assert f'alt="{name}"' in report


def test_overlay_lies_on_the_fields_pixels_and_the_line_holds_half_the_mass(tmp_path):
    maps = attention_maps.read_attention(attention_file(tmp_path / "maps.npz"))
    fig = attention_maps.mean_figure(maps, "pretrained")
    axes = np.array(fig.axes).reshape(3, 3)
    for ax in axes.flat:
        extents = [tuple(image.get_extent()) for image in ax.get_images()]
        assert set(extents) == {(0, 40, 32, 0)}  # field and map share the pixel grid
    assert len(axes[0][0].get_images()) == 1 and len(axes[0][1].get_images()) == 2
    plt.close(fig)

    weights = np.array([[0.4, 0.05], [0.3, 0.25]])
    mask = attention_maps.half_mass_mask(weights)
    assert mask.tolist() == [[True, False], [True, False]]  # 0.4 + 0.3 >= 0.5, fewest patches
    random = np.random.default_rng(1).random((6, 7))
    mask = attention_maps.half_mass_mask(random)
    kept = np.sort(random[mask])
    assert kept.sum() >= random.sum() / 2 > kept.sum() - kept[0]  # minimal: one fewer is short
    assert random[mask].min() >= random[~mask].max()


def test_a_broken_attention_file_is_named(tmp_path):
    broken = tmp_path / "maps.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="maps.npz: not an attention-map file"):
        attention_maps.read_attention(broken)
