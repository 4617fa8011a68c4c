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
from workflow_scripts.summary.figures import metric_vs_epoch_figure
from workflow_scripts.summary.headline import headline_pivot
from workflow_scripts.summary.runs import read_runs, read_weak_labels


def evaluated_run(root, arch, channel, epoch, seed, training_seed=None):
    """An evaluation (metrics.json, predictions.csv, profiles.parquet) of synthetic features;
    `training_seed`: another training seed's (folder and label part seed_S)."""
    seed_part = "" if training_seed is None else f"seed_{training_seed}/"
    features = root / f"features_{arch}_{channel}_{seed_part.strip('/')}{epoch}.parquet"
    synthetic_features(seed=seed).to_parquet(features)
    out_dir = root / "eval" / arch / channel / seed_part / f"epoch_{epoch:04d}"
    label = f"{arch}/{channel}/{seed_part}{epoch:04d}"
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


def test_every_training_seed_carries_the_weak_label_and_the_maps_show_the_first(tmp_path, capsys):
    # seed 0 (train.seed: labels without a seed part) and seed 3, pretrained weights: seed 3
    # shares the first seed's epoch 0; one checkpoint JSON (the first seed's) names the label
    first = [evaluated_run(tmp_path, "vit_s", "DAPI", e, seed=e) for e in (0, 5)]
    other = evaluated_run(tmp_path, "vit_s", "DAPI", 5, seed=7, training_seed=3)
    meta = checkpoint_meta(tmp_path, "vit_s", "DAPI", "moa")
    common = [
        "--train-seeds", json.dumps({"vit_s": [0, 3]}), "--weights", "vit_s=hub",
        "--bootstrap", json.dumps({"resamples": 200}), "--checkpoint-metas", str(meta),
    ]  # fmt: skip
    profiles = [str(d / "profiles.parquet") for d in first]
    out_dir = summarize(tmp_path, [*first, other], *common, "--profiles", *profiles)

    table = pd.read_csv(out_dir / "summary.csv")
    assert sorted(zip(table["seed"], table["epoch"])) == [(0, 0), (0, 5), (3, 5)]
    assert set(table["weak_label"]) == {"MoA (circular)"}
    best = pd.read_csv(out_dir / "best_epochs.csv")
    assert sorted(best["seed"].unique()) == [0, 3]
    assert set(best["weak_label"]) == {"MoA (circular)"}
    # the headline: each seed's row and the mean row carry the weak label as an index level
    pivot = headline_pivot(best)
    names = ["model", "channel", "seed", "epoch 0 =", "weak label", "last epoch"]
    assert pivot.index.names == names
    assert list(pivot.index) == [
        ("vit_s", "DAPI", seed, "pretrained", "MoA (circular)", 5)
        for seed in ("0", "3", "mean (2)")
    ]
    report = (out_dir / "report.html").read_text()
    headline = report[: report.index("<h2>Metrics</h2>")]
    assert "weak label = MoA (circular)" in headline and "mean (2)" in headline
    assert headline.count("MoA (circular)</th>") == 3  # the index cell of every row
    assert "[" in headline  # intervals under the values

    # the t-SNE map: the first seed's epochs, its scores in the panel titles
    points = pd.read_csv(out_dir / "figures" / "embedding_map_vit_s_DAPI.csv")
    assert sorted(points["epoch"].unique()) == [0, 5]
    first_profiles = pd.read_parquet(first[1] / "profiles.parquet")
    assert (points.loc[points["epoch"] == 5, "treatment"].tolist()) == (
        first_profiles["treatment"].tolist()
    )
    # another seed's profiles are refused by name, not mixed into the first seed's map
    status = cli.main(
        ["--metrics", *(str(d / "metrics.json") for d in [*first, other]),
         "--validation-report", str(validation_report(tmp_path)),
         "--out-dir", str(tmp_path / "other"), *common,
         "--profiles", *profiles, str(other / "profiles.parquet")]
    )  # fmt: skip
    assert status == 2
    error = capsys.readouterr().err
    assert "seed_3/epoch_0005/profiles.parquet: a --profiles file must lie beside" in error
    assert not (tmp_path / "other").exists()


def test_checkpoints_that_disagree_on_the_weak_label_are_refused(tmp_path):
    runs = [evaluated_run(tmp_path, "vit_s", "DAPI", 5, seed=1)]
    metas = [checkpoint_meta(tmp_path / "a", "vit_s", "DAPI", "moa")]
    metas.append(checkpoint_meta(tmp_path / "b", "vit_s", "DAPI", "compound"))
    with pytest.raises(InputError, match="b/train/vit_s/DAPI/epoch_0005.json: .*'compound'"):
        read_weak_labels(metas)
    status = cli.main(
        ["--metrics", str(runs[0] / "metrics.json"), "--validation-report",
         str(validation_report(tmp_path)), "--out-dir", str(tmp_path / "out"),
         "--checkpoint-metas", *map(str, metas)]
    )  # fmt: skip
    assert status == 2 and not (tmp_path / "out").exists()


def test_a_panel_names_its_weak_label(tmp_path):
    runs = [evaluated_run(tmp_path, "vit_s", c, 5, seed=1) for c in ("DAPI", "rgb")]
    table = read_runs([d / "metrics.json" for d in runs]).assign(
        epoch0="pretrained", weak_label=["compound", "none"]
    )
    fig = metric_vs_epoch_figure(table, "nsc")
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    plt.close(fig)
    assert titles == ["vit_s\nDAPI\nweak label = compound", "rgb"]


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
