"""Summary: tables over (arch, channel, epoch), best epochs, plots and a self-contained report."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.evaluate import evaluate
from workflow_scripts.summary import bootstrap, cli
from workflow_scripts.summary.bootstrap import Settings
from workflow_scripts.summary.figures import (
    confusion_figure,
    metric_vs_epoch_figure,
    training_health_figure,
)
from workflow_scripts.summary.headline import FIELDS, headline_pivot
from workflow_scripts.summary.health import read_training_logs
from workflow_scripts.summary.runs import (
    confusion_run,
    oracle_pivot,
    read_baselines,
    read_runs,
)

MOAS = ["Actin disruptors", "DNA damage"]


N_QUERIES = 20  # per protocol, 2 concentrations of each of 10 compounds


def write_predictions(run_dir, nsc, nscb, map_enabled=True):
    """predictions.csv whose per-query outcomes give these NSC and NSCB (k / N_QUERIES hits)
    and constant APs of nscb (NSC queries) and nscb / 2 (NSCB queries)."""
    rows = []
    for protocol, value, ap in (("nsc", nsc, nscb), ("nscb", nscb, nscb / 2)):
        hits = round(value * N_QUERIES)
        for q in range(N_QUERIES):
            rows.append(
                {
                    "protocol": protocol,
                    "treatment": f"cpd{q // 2}@{q % 2}",
                    "compound": f"cpd{q // 2}",
                    "concentration": q % 2,
                    "moa": MOAS[q % 2],
                    "neighbour": f"cpd{(q // 2 + 1) % (N_QUERIES // 2)}@{q % 2}",
                    "correct": q < hits,
                    "average_precision": ap if map_enabled else np.nan,
                }
            )
    table = pd.DataFrame(rows)
    table.to_csv(run_dir / "predictions.csv", index=False)
    return table


def write_run(root, arch, channel, epoch, nscb, map_enabled=True, seed=None):
    """metrics.json (+ predictions.csv, confusion.csv) of one evaluation; `seed`: another
    training seed's (label arch/channel/seed_S/NNNN, folder seed_S/)."""
    seed_part = "" if seed is None else f"seed_{seed}/"
    run_dir = root / arch / channel / seed_part / f"epoch_{epoch:04d}"
    run_dir.mkdir(parents=True)
    table = write_predictions(run_dir, min(1.0, nscb + 0.1), nscb, map_enabled)

    def mean(protocol, column):
        return float(table.loc[table["protocol"] == protocol, column].astype(float).mean())

    metrics = {
        "label": f"{arch}/{channel}/{seed_part}{epoch:04d}",
        "nsc": mean("nsc", "correct"),
        "nscb": mean("nscb", "correct"),
        "map_nsc": mean("nsc", "average_precision") if map_enabled else None,
        "map_nscb": mean("nscb", "average_precision") if map_enabled else None,
        "n_treatments_nsc": N_QUERIES,
        "n_treatments_nscb": N_QUERIES,
        "n_images": 3848,
        "n_dmso": 1320,
        "feature_dim": 384,
        "tvn_components": 384,
        "per_moa": {},
        "features_used": 383,
        "features_dropped": {"constant in DMSO": ["feat_0007"]},
        "normalization": "standardize",
        "tvn": {"components": 384, "possible": 384},
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    confusion = pd.DataFrame(
        [[3 + epoch, 1], [0, 2]], index=pd.Index(MOAS, name="moa"), columns=MOAS
    )
    confusion.reset_index().to_csv(run_dir / "confusion.csv", index=False)
    return run_dir / "metrics.json"


@pytest.fixture
def runs(tmp_path):
    # vit_s/DAPI peaks at epoch 5 (0.8, the highest of all) and ends lower; vit_s/rgb reaches 0.6
    # at epochs 5 and 10 (a tie); vit_b/DAPI rises steadily and ends highest (0.75).
    nscb = {
        ("vit_s", "DAPI"): {0: 0.5, 5: 0.8, 10: 0.7},
        ("vit_s", "rgb"): {0: 0.4, 5: 0.6, 10: 0.6},
        ("vit_b", "DAPI"): {0: 0.55, 5: 0.6, 10: 0.75},
    }
    paths = [
        write_run(tmp_path / "eval", a, c, e, v)
        for (a, c), by_epoch in nscb.items()
        for e, v in by_epoch.items()
    ]
    validation = tmp_path / "validation_report.json"
    validation.write_text(
        json.dumps(
            {
                "n_images": 3848,
                "n_treatments": 103,
                "channels": ["DAPI", "Tubulin", "Actin"],
                "per_moa": {"DNA damage": {"images": 100, "treatments": 7}},
                "images_per_batch": {"Week1": 400},
            }
        )
    )
    return paths, validation


def test_summary_writes_tables_plots_and_a_self_contained_report(runs, tmp_path):
    paths, validation = runs
    out_dir = tmp_path / "summary"
    assert (
        cli.main(
            [
                "--metrics",
                *map(str, paths),
                "--validation-report",
                str(validation),
                "--out-dir",
                str(out_dir),
            ]
        )
        == 0
    )

    table = pd.read_csv(out_dir / "summary.csv")
    assert len(table) == 9
    assert list(table.columns[:8]) == [
        "arch",
        "channel",
        "seed",
        "epoch",
        "nsc",
        "nscb",
        "map_nsc",
        "map_nscb",
    ]
    assert table["seed"].isna().all()  # no --train-seeds: unknown
    row = table.query("arch == 'vit_s' and channel == 'DAPI' and epoch == 5").iloc[0]
    assert row["nscb"] == 0.8 and row["map_nscb"] == pytest.approx(0.4)
    # every metric's interval, from the run's predictions.csv (the defaults: 1000, 95 %, seed 0)
    queries = pd.read_csv(paths[0].parent.parent / "epoch_0005" / "predictions.csv")
    nscb = queries[queries["protocol"] == "nscb"]
    expected = bootstrap.compound_interval(
        nscb["correct"].astype(float).to_numpy(), nscb["compound"].to_numpy(), Settings()
    )
    assert (row["nscb_ci_low"], row["nscb_ci_high"]) == pytest.approx(expected)
    assert row["nscb_ci_low"] < 0.8 < row["nscb_ci_high"]
    assert row["map_nscb_ci_low"] == row["map_nscb_ci_high"] == pytest.approx(0.4)  # constant AP

    best = pd.read_csv(out_dir / "best_epochs.csv").set_index(["arch", "channel", "metric"])
    # the headline: the last epoch against epoch 0; best-of-epochs values only under oracle_ names
    assert not {"best_epoch", "best_value"} & set(best.columns)
    dapi = best.loc[("vit_s", "DAPI", "nscb")]
    assert (
        dapi["pretrained_value"] == 0.5 and dapi["last_epoch"] == 10 and dapi["last_value"] == 0.7
    )
    assert dapi["last_minus_pretrained"] == pytest.approx(0.2)
    assert dapi["pretrained_ci_low"] < 0.5 < dapi["pretrained_ci_high"]
    assert dapi["last_ci_low"] < 0.7 < dapi["last_ci_high"]
    assert dapi["pretrained_label"] == "vit_s/DAPI/0000" and dapi["last_label"] == "vit_s/DAPI/0010"

    # paired: the last epoch against epoch 0 per series; NSCB 10 of 20 -> 14 of 20, the first
    # queries hit in both: 4 gained, none lost (exact McNemar p = 2 / 2^4)
    comparisons = pd.read_csv(out_dir / "comparisons.csv")
    assert set(comparisons["comparison"]) == {"last epoch vs epoch 0"}
    assert len(comparisons) == 3 * 4
    test = comparisons.query("channel == 'DAPI' and arch == 'vit_s' and metric == 'nscb'").iloc[0]
    assert (test["run_a"], test["run_b"]) == ("vit_s/DAPI/0010", "vit_s/DAPI/0000")
    assert (test["improved"], test["worsened"], test["n_paired"]) == (4, 0, 20)
    assert test["p_value"] == pytest.approx(2 / 2**4) and test["test"] == "exact McNemar"
    assert test["difference"] == pytest.approx(0.2)
    assert dapi["oracle_best_epoch"] == 5 and dapi["oracle_best_value"] == 0.8
    assert best.loc[("vit_s", "rgb", "nscb"), "oracle_best_epoch"] == 5  # tie: the earliest epoch
    assert best.loc[("vit_b", "DAPI", "nsc"), "oracle_best_epoch"] == 10

    for metric in ("nsc", "nscb", "map_nsc", "map_nscb"):
        assert (out_dir / "figures" / f"{metric}_vs_epoch.png").read_bytes()[:4] == b"\x89PNG"
    assert (out_dir / "figures" / "confusion_last_epoch.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out_dir.glob("**/*.png")) == sorted(
        [
            "confusion_last_epoch.png",
            "map_nsc_vs_epoch.png",
            "map_nscb_vs_epoch.png",
            "nsc_vs_epoch.png",
            "nscb_vs_epoch.png",
        ]
    )

    report = (out_dir / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 5
    assert "http://" not in report and "https://" not in report  # nothing fetched when opened
    # the headline shows intervals and the paired test under the change
    headline_table = report[: report.index("<h2>Metrics</h2>")]
    assert f"[{dapi['last_ci_low']:.2f}, {dapi['last_ci_high']:.2f}]" in headline_table
    assert "+4 &minus;0, p = 0.12" in headline_table
    assert "Error bars and tests" in report and "1000 resamples, seed 0" in report
    # the headline table is the first thing read: before the metric notes, the dataset and the
    # per-run evaluation tables; the oracle one comes later and says how it was selected
    headline = report.index("Last epoch (pre-declared) vs epoch 0 (before fine-tuning)")
    oracle = report.index("oracle: selected on the evaluation metric itself (optimistic)")
    assert report.index("<h2>") == headline - len("<h2>")
    assert headline < report.index("<h2>Dataset</h2>") < report.index("What each evaluation did")
    assert headline < oracle
    # confusion: the last epoch of the highest last-epoch NSCB, not the overall maximum
    # (vit_s/DAPI/0005)
    assert "NSC nearest-neighbour MoAs of vit_b/DAPI/0010" in report
    assert "vit_s/DAPI/0005" not in report
    assert "3848" in report and "DNA damage" in report and "Week1" in report
    # what each evaluation did, per run (metrics.json of write_run: 1320 DMSO, 384 of 384 features)
    start, end = report.index("What each evaluation did"), report.index("Best epoch per")
    evaluation = report[start:end]
    assert evaluation.count("<td>standardize</td>") == 9 and "1320" in evaluation
    assert row["n_dmso"] == 1320 and row["features_dropped"] == 1 and row["tvn_possible"] == 384


def test_summary_without_map_skips_its_plots(tmp_path):
    paths = [
        write_run(tmp_path / "eval", "vit_s", "DAPI", e, 0.5 + e / 100, map_enabled=False)
        for e in (0, 2)
    ]
    validation = tmp_path / "v.json"
    validation.write_text("{}")
    out_dir = tmp_path / "summary"
    assert (
        cli.main(
            [
                "--metrics",
                *map(str, paths),
                "--validation-report",
                str(validation),
                "--out-dir",
                str(out_dir),
            ]
        )
        == 0
    )
    figures = out_dir / "figures"
    assert (figures / "nscb_vs_epoch.png").exists() and not (
        figures / "map_nsc_vs_epoch.png"
    ).exists()
    assert pd.read_csv(out_dir / "summary.csv")["map_nsc"].isna().all()


def test_bad_metrics_file_gives_one_error_and_no_output(runs, tmp_path, capsys):
    paths, validation = runs
    broken = json.loads(paths[0].read_text())
    broken["label"] = "vit_s-DAPI-0000"
    paths[0].write_text(json.dumps(broken))
    out_dir = tmp_path / "summary"
    assert (
        cli.main(
            [
                "--metrics",
                *map(str, paths),
                "--validation-report",
                str(validation),
                "--out-dir",
                str(out_dir),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(paths[0]) in err and "arch/channel/NNNN" in err
    assert not out_dir.exists()


def test_confusion_run_falls_back_to_nsc_at_the_last_epoch():
    runs = pd.DataFrame(
        {
            "arch": ["a", "a", "b", "b"],
            "channel": ["DAPI"] * 4,
            "epoch": [0, 4, 0, 4],
            "nsc": [0.9, 0.5, 0.1, 0.6],
            "nscb": [float("nan")] * 4,
        }
    )
    row, metric = confusion_run(runs)
    assert metric == "nsc" and (row["arch"], row["epoch"]) == ("b", 4)  # a/0000 scores higher


def cellprofiler_like_table(path):
    """A per-well profile table in CellProfiler's column style: 2 weeks x 2 plates, 4 MoAs x 2
    compounds (one per week), 2 DMSO wells per plate; features = a MoA direction + noise."""
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(4, 6))
    rows = []
    for week in ("Week1", "Week2"):
        for plate in (f"{week}_a", f"{week}_b"):
            for moa in range(4):
                compound = f"cpd{moa}{week[-1]}"
                signal = directions[moa] + rng.normal(scale=1.0, size=6)
                rows.append((compound, 1.0, f"moa{moa}", plate, week, signal))
            rows += [
                ("DMSO", 0.0, "DMSO", plate, week, rng.normal(scale=0.3, size=6)) for _ in range(2)
            ]
    table = pd.DataFrame(
        [
            {
                "Metadata_Compound": c,
                "Metadata_Concentration": conc,
                "Metadata_MoA": m,
                "Metadata_Plate": p,
                "Metadata_Batch": b,
                "Metadata_MoA_code": i % 4,
                **{f"Cells_Intensity_Feature{k}": v for k, v in enumerate(values)},
            }
            for i, (c, conc, m, p, b, values) in enumerate(rows)
        ]
    )
    table.to_csv(path, index=False)
    return path


def test_baselines_and_random_init_appear_in_tables_plots_and_the_pivoted_report(runs, tmp_path):
    paths, validation = runs
    table = cellprofiler_like_table(tmp_path / "cp_wells.csv")
    baseline_dir = tmp_path / "eval" / "baselines" / "cellprofiler"
    assert (
        evaluate.main(
            [
                "--features",
                str(table),
                "--feature-columns",
                "^Cells_",
                "--metadata-map",
                "compound=Metadata_Compound,concentration=Metadata_Concentration,"
                "moa=Metadata_MoA,plate=Metadata_Plate,batch=Metadata_Batch",
                "--settings",
                json.dumps({"tvn": {"enabled": True}, "map": {"permutations": 20}}),
                "--out-dir",
                str(baseline_dir),
                "--label",
                "cellprofiler/baseline/0000",
            ]
        )
        == 0
    )
    scored = json.loads((baseline_dir / "metrics.json").read_text())
    out_dir = tmp_path / "summary"
    assert (
        cli.main(
            [
                "--metrics",
                *map(str, paths),
                "--validation-report",
                str(validation),
                "--out-dir",
                str(out_dir),
                "--baseline-metrics",
                str(baseline_dir / "metrics.json"),
                "--weights",
                "vit_s=none,vit_b=hub",
                "--pixel-scales",
                json.dumps({"vit_s": "training global crops 1.62-2.29"}),
            ]
        )
        == 0
    )

    table = pd.read_csv(out_dir / "summary.csv")
    assert len(table) == 10
    row = table[table["kind"] == "baseline"].iloc[0]
    assert (row["arch"], row["channel"]) == ("cellprofiler", "baseline")
    assert row["nsc"] == pytest.approx(scored["nsc"]) and row["map_nscb"] == pytest.approx(
        scored["map_nscb"]
    )
    assert set(table.loc[table["arch"] == "vit_s", "epoch0"]) == {"random init"}
    assert set(table.loc[table["arch"] == "vit_b", "epoch0"]) == {"pretrained"}
    best = pd.read_csv(out_dir / "best_epochs.csv")
    assert "cellprofiler" not in set(best["arch"])  # no epochs to pick from

    # pivot: one row per arch x channel x seed (+ the baseline), metric x FIELDS columns; the
    # weak label is unknown ("–") without the checkpoints' JSON
    pivot = headline_pivot(best, read_baselines([baseline_dir / "metrics.json"]))
    assert list(pivot.index) == [
        ("vit_b", "DAPI", "–", "pretrained", "–", 10),
        ("vit_s", "DAPI", "–", "random init", "–", 10),
        ("vit_s", "rgb", "–", "random init", "–", 10),
        ("cellprofiler", "baseline", "–", "–", "–", "–"),
    ]
    assert list(pivot.columns) == [
        (m, c) for m in ("NSC", "NSCB", "mAP (NSC)", "mAP (NSCB)") for c in FIELDS
    ]
    vit_s = ("vit_s", "DAPI", "–", "random init", "–", 10)
    assert pivot.loc[vit_s, ("NSCB", "epoch 0")] == 0.5
    assert pivot.loc[vit_s, ("NSCB", "last")] == 0.7
    assert pivot.loc[vit_s, ("NSCB", "change")] == pytest.approx(0.2)
    assert pivot.loc[("vit_b", "DAPI", "–", "pretrained", "–", 10), ("mAP (NSCB)", "last")] == (
        pytest.approx(0.375)
    )
    baseline_row = pivot.loc[("cellprofiler", "baseline", "–", "–", "–", "–")]
    assert baseline_row[("NSC", "last")] == pytest.approx(scored["nsc"]) and np.isnan(
        baseline_row[("NSC", "epoch 0")]
    )
    assert baseline_row[("mAP (NSCB)", "last")] == pytest.approx(scored["map_nscb"])
    oracle = oracle_pivot(best)
    assert oracle.loc[vit_s, ("NSCB", "best epoch")] == 5
    assert oracle.loc[vit_s, ("NSCB", "value")] == 0.8

    report = (out_dir / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 5
    assert "random init" in report and "cellprofiler" in report
    assert "training global crops 1.62-2.29" in report
    # the baseline's treatments are other compounds than the runs': nothing to pair
    versus = report[report.index("<h2>Last epoch vs the baselines") : report.index("<h2>Metrics")]
    assert versus.count("no common treatment") == 3 * 4
    # the pivoted headline has one row per arch x channel, not one per metric
    headline = report[
        report.index("Last epoch (pre-declared)") : report.index("<h2>Last epoch vs the baselines")
    ]
    assert (
        headline.count("<tr>") == 3 + 4
    )  # header rows: metric, column, row names; 3 runs + 1 baseline

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**scored, "label": "cellprofiler/all/0000"}))
    assert (
        cli.main(
            [
                "--metrics",
                *map(str, paths),
                "--validation-report",
                str(validation),
                "--out-dir",
                str(tmp_path / "bad"),
                "--baseline-metrics",
                str(bad),
            ]
        )
        == 2
    )
    assert not (tmp_path / "bad").exists()


def write_train_log(root, arch, channel, epochs):
    """train/{arch}/{channel}/log.jsonl with the health keys; `epochs`: {epoch: collapse}."""
    path = root / arch / channel / "log.jsonl"
    path.parent.mkdir(parents=True)
    lines = [
        json.dumps(
            {
                "epoch": e,
                "loss": 7.0 - e / 10,
                "teacher_entropy": 6.9 if c else 4.0,
                "teacher_batch_entropy": 6.9 if c else 5.0,
                "teacher_mutual_info": 0.0 if c else 1.0,
                "teacher_kl": 0.01 if c else 0.5,
                "center_norm": 3.0,
                "cls_std": 1e-6 if c else 0.2,
                "cls_relative_std": 1e-6 if c else 0.2,
                "cls_effective_rank": 5.0,
                "collapse": c,
            }
        )
        for e, c in epochs.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_training_health_is_tabled_plotted_and_flagged(tmp_path):
    paths = [
        write_run(tmp_path / "eval", "vit_s", ch, e, 0.5)
        for ch in ("DAPI", "Actin", "combined")
        for e in (0, 5, 10)
    ]
    validation = tmp_path / "validation_report.json"
    validation.write_text(
        json.dumps(
            {
                "n_images": 10,
                "n_treatments": 3,
                "channels": ["DAPI"],
                "per_moa": {},
                "images_per_batch": {},
            }
        )
    )
    logs = [
        write_train_log(tmp_path / "train", "vit_s", "DAPI", {e: None for e in range(1, 11)}),
        write_train_log(
            tmp_path / "train",
            "vit_s",
            "Actin",
            {e: ("uniform" if e >= 5 else None) for e in range(1, 11)},
        ),
    ]
    out_dir = tmp_path / "summary"
    args = [
        "--metrics",
        *map(str, paths),
        "--validation-report",
        str(validation),
        "--out-dir",
        str(out_dir),
    ]
    assert cli.main(args + ["--train-logs", *map(str, logs)]) == 0

    health = pd.read_csv(out_dir / "training_health.csv")
    assert len(health) == 20 and set(health["channel"]) == {"DAPI", "Actin"}
    assert health.query("channel == 'Actin' and epoch == 7")["teacher_mutual_info"].item() == 0.0
    table = pd.read_csv(out_dir / "summary.csv", keep_default_na=False).set_index(
        ["channel", "epoch"]
    )["training_collapse"]
    assert table[("Actin", 10)] == "uniform" and table[("Actin", 0)] == ""
    assert table[("DAPI", 10)] == "" and table[("combined", 10)] == "Actin:uniform"
    assert table[("combined", 0)] == ""
    assert (out_dir / "figures" / "training_health.png").read_bytes()[:4] == b"\x89PNG"
    report = (out_dir / "report.html").read_text()
    assert "Training health" in report and "some runs look collapsed" in report
    assert "5 (uniform), 6 (uniform)" in report

    # without --train-logs: no health outputs, summary.csv unchanged in shape
    plain = tmp_path / "plain"
    assert cli.main(args[:-1] + [str(plain)]) == 0
    assert not (plain / "training_health.csv").exists()
    assert "training_collapse" not in pd.read_csv(plain / "summary.csv").columns
    # a broken log line names the file and line
    logs[0].write_text('{"epoch": 1}\nnot json\n')
    assert cli.main(args + ["--train-logs", str(logs[0])]) == 2


# BBBC021's MoAs: the long ones are what a figure must leave room for
BBBC021_MOAS = [
    "Actin disruptors",
    "Aurora kinase inhibitors",
    "Cholesterol-lowering",
    "DNA damage",
    "DNA replication",
    "Eg5 inhibitors",
    "Epithelial",
    "Kinase inhibitors",
    "Microtubule destabilizers",
    "Microtubule stabilizers",
    "Protein degradation",
    "Protein synthesis",
]


def drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def ticks_in_view(axis):
    low, high = sorted(axis.get_view_interval())
    return [t for t in axis.get_major_locator()() if low <= t <= high]


def close(fig):
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_epoch_axes_tick_at_whole_epochs_only(runs, tmp_path):
    # epochs 0, 5, 10 (the fixture) and the demo's 0, 2, 4: a default locator ticks at 2.5 / 0.5
    paths, _ = runs
    paths += [write_run(tmp_path / "eval2", "vit_t", "DAPI", e, 0.5) for e in (0, 2, 4)]
    table = read_runs(paths).assign(epoch0="random init")
    fig = metric_vs_epoch_figure(table, "nscb")
    drawn(fig)
    for ax in fig.axes:
        ticks = ticks_in_view(ax.xaxis)
        assert len(ticks) >= 2 and all(t == int(t) for t in ticks), ticks
    close(fig)

    logs = [write_train_log(tmp_path / "train", "vit_s", "DAPI", {e: None for e in (1, 2, 3, 4)})]
    fig = training_health_figure(read_training_logs(logs))
    drawn(fig)
    for ax in fig.axes:
        ticks = ticks_in_view(ax.xaxis)
        assert len(ticks) >= 2 and all(t == int(t) for t in ticks), ticks
    close(fig)


def test_a_single_epoch_still_ticks_at_a_whole_epoch(tmp_path):
    table = read_runs([write_run(tmp_path, "vit_s", "DAPI", 0, 0.5)]).assign(epoch0="pretrained")
    fig = metric_vs_epoch_figure(table, "nscb")
    drawn(fig)
    assert ticks_in_view(fig.axes[0].xaxis) == [0]
    close(fig)


@pytest.mark.parametrize("n_moas", [3, 12])
def test_confusion_labels_lie_inside_the_figure(n_moas):
    # the longest names first: a small matrix has the least room for them
    moas = sorted(BBBC021_MOAS, key=len, reverse=True)[:n_moas]
    counts = np.arange(n_moas * n_moas).reshape(n_moas, n_moas) % 4
    confusion = pd.DataFrame(counts, index=pd.Index(moas, name="moa"), columns=moas)
    fig = confusion_figure(confusion, "NSC nearest-neighbour MoA, last epoch: vit_s/DAPI/0010")
    renderer = drawn(fig)
    (ax, _colorbar) = fig.axes
    texts = [*ax.get_xticklabels(), *ax.get_yticklabels(), ax.xaxis.label, ax.yaxis.label]
    assert sorted(t.get_text() for t in ax.get_xticklabels()) == sorted(moas)
    page = fig.bbox
    for text in texts:
        box = text.get_window_extent(renderer)
        assert (
            box.x0 >= page.x0 and box.y0 >= page.y0 and box.x1 <= page.x1 and box.y1 <= page.y1
        ), f"{text.get_text()!r} at {box} outside the figure {page}"
    close(fig)


def jump_like_evaluation(root, epoch, seed):
    """metrics.json + predictions.csv of a real evaluation (evaluate CLI) of a table where every
    treatment lies in every batch: no NSCB query has a candidate, so NSCB (and its mAP) is null."""
    rng = np.random.default_rng(seed)
    rows = [
        (compound, 0.0 if compound == "DMSO" else float(conc), moa, f"{batch}_P{p}", batch)
        for batch in ("W1", "W2")
        for p in range(2)
        for compound, moa in (("a", "X"), ("b", "X"), ("c", "Y"), ("d", "Y"), ("DMSO", "DMSO"))
        for conc in (1, 2)
    ]
    table = pd.DataFrame(rows, columns=["compound", "concentration", "moa", "plate", "batch"])
    names = [f"feat_{i}" for i in range(6)]
    features = pd.DataFrame(rng.normal(size=(len(table), len(names))), columns=names)
    source = root / f"features_{epoch}.csv"
    pd.concat([table, features], axis=1).to_csv(source, index=False)
    out_dir = root / "eval" / "vit_s" / "DAPI" / f"epoch_{epoch:04d}"
    argv = ["--features", str(source), "--out-dir", str(out_dir), "--label"]
    argv += [f"vit_s/DAPI/{epoch:04d}", "--settings", '{"map": {"permutations": 10}}']
    assert evaluate.main(argv) == 0
    return out_dir / "metrics.json"


def test_nscb_not_applicable_shows_as_n_a_with_no_interval_nor_test(tmp_path):
    """Issue 23, case 5 through the error bars: a run whose NSCB is null (no query has a
    cross-batch candidate) has no NSCB interval and no NSCB test, its predictions.csv agrees
    with metrics.json (no outcome, not 8 misses), and the report shows n/a, never 0."""
    paths = [jump_like_evaluation(tmp_path, epoch, seed=epoch) for epoch in (0, 2)]
    for path in paths:
        metrics = json.loads(path.read_text())
        assert metrics["nscb"] is None and metrics["n_queries_without_candidates_nscb"] == 8
        assert metrics["nsc"] is not None
        predictions = pd.read_csv(path.parent / "predictions.csv")
        nscb_rows = predictions[predictions["protocol"] == "nscb"]
        assert len(nscb_rows) == 8 and not nscb_rows["correct"].any()  # rows kept, all misses
    baseline = tmp_path / "baseline" / "metrics.json"
    baseline.parent.mkdir()
    for name in ("metrics.json", "predictions.csv", "confusion.csv"):
        text = (paths[0].parent / name).read_text()
        (baseline.parent / name).write_text(text.replace("vit_s/DAPI/0000", "cp/baseline/0000"))
    out_dir = summarise(tmp_path, paths, "--baseline-metrics", str(baseline))

    summary = pd.read_csv(out_dir / "summary.csv")
    assert summary[["nscb", "nscb_ci_low", "nscb_ci_high"]].isna().all(axis=None)
    assert summary[["map_nscb", "map_nscb_ci_low", "map_nscb_ci_high"]].isna().all(axis=None)
    assert (summary["nsc_ci_low"] <= summary["nsc"]).all()
    assert (summary["nsc"] <= summary["nsc_ci_high"]).all()
    best = pd.read_csv(out_dir / "best_epochs.csv")
    nscb = best[best["metric"] == "nscb"]
    assert len(nscb) == 1 and nscb[["last_value", "oracle_best_value"]].isna().all(axis=None)
    assert nscb[["pretrained_ci_low", "last_ci_high"]].isna().all(axis=None)
    comparisons = pd.read_csv(out_dir / "comparisons.csv")
    assert set(comparisons["metric"]) == {"nsc", "map_nsc"}  # NSCB has nothing to compare
    assert set(comparisons["comparison"]) == {"last epoch vs epoch 0", "last epoch vs baseline"}

    html = (out_dir / "report.html").read_text()
    headline = html[html.index('class="dataframe headline"') :]
    rows = re.findall(r"<tr>(.*?)</tr>", headline[: headline.index("</table>")], re.S)
    cells = [re.findall(r"<td>(.*?)</td>", row, re.S) for row in rows]
    body = [row for row in cells if row]  # epoch 0, last, last - epoch 0 per metric
    assert len(body) == 2  # the series and the baseline
    assert all(row[3:6] == ["n/a"] * 3 and row[9:12] == ["n/a"] * 3 for row in body), body
    assert body[0][2].startswith(("+", "&minus;")) and "p = " in body[0][2]  # NSC has its test
    assert not (out_dir / "figures" / "nscb_vs_epoch.png").exists()


def test_rows_prepare_left_out_are_tabled_in_the_report(runs, tmp_path):
    """Issue 23, case 2: the validation report's records show as a table, an empty list as none."""
    paths, validation = runs
    report = json.loads(validation.read_text())
    left_out = {"table": "image.csv", "reason": "compound not in the MoA table", "rows": 72}
    report.update(rows_left_out=[left_out], control_spellings=[])
    validation.write_text(json.dumps(report))
    out_dir = tmp_path / "summary"
    argv = ["--metrics", *map(str, paths), "--validation-report", str(validation)]
    assert cli.main([*argv, "--out-dir", str(out_dir)]) == 0
    html = (out_dir / "report.html").read_text()
    assert "<summary>rows_left_out (72 rows)</summary>" in html
    assert "<td>compound not in the MoA table</td>" in html
    assert "<th>control_spellings</th><td>none</td>" in html


def summarise(tmp_path, paths, *extra):
    validation = tmp_path / "validation_report.json"
    validation.write_text("{}")
    out_dir = tmp_path / "summary"
    args = ["--metrics", *map(str, paths), "--validation-report", str(validation)]
    assert cli.main([*args, "--out-dir", str(out_dir), *extra]) == 0
    return out_dir


@pytest.mark.parametrize("weights", ["hub", "none"])
def test_training_seeds_get_rows_mean_and_sd_and_share_a_pretrained_epoch_0(tmp_path, weights):
    # seed 0 (labels without a seed part) and seed 3; pretrained weights: one epoch 0 for both;
    # random init: each seed its own epoch 0
    nscb = {0: {0: 0.5, 5: 0.6, 10: 0.7}, 3: {0: 0.45, 5: 0.55, 10: 0.85}}
    paths = [
        write_run(tmp_path / "eval", "vit_s", "DAPI", e, v, seed=None if s == 0 else s)
        for s, by_epoch in nscb.items()
        for e, v in by_epoch.items()
        if not (weights == "hub" and s == 3 and e == 0)
    ]
    out_dir = summarise(
        tmp_path,
        paths,
        "--train-seeds",
        json.dumps({"vit_s": [0, 3]}),
        "--weights",
        f"vit_s={weights}",
        "--bootstrap",
        json.dumps({"resamples": 300}),
    )
    table = pd.read_csv(out_dir / "summary.csv")
    assert sorted(zip(table["seed"], table["epoch"])) == sorted(
        (s, e)
        for s, by_epoch in nscb.items()
        for e in by_epoch
        if not (weights == "hub" and s == 3 and e == 0)
    )
    best = pd.read_csv(out_dir / "best_epochs.csv").set_index(["seed", "metric"])
    epoch0 = "vit_s/DAPI/0000" if weights == "hub" else "vit_s/DAPI/seed_3/0000"
    assert best.loc[(3, "nscb"), "pretrained_label"] == epoch0
    assert best.loc[(3, "nscb"), "pretrained_value"] == (0.5 if weights == "hub" else 0.45)
    assert best.loc[(3, "nscb"), "last_label"] == "vit_s/DAPI/seed_3/0010"

    comparisons = pd.read_csv(out_dir / "comparisons.csv").set_index(["seed", "metric"])
    assert comparisons.loc[(3, "nscb"), "run_b"] == epoch0
    assert comparisons.loc[(0, "nscb"), "run_a"] == "vit_s/DAPI/0010"

    spread = pd.read_csv(out_dir / "seeds.csv").set_index(["epoch", "metric"])
    last = spread.loc[(10, "nscb")]
    assert last["n_seeds"] == 2 and last["seeds"] == "0 3"
    assert last["mean"] == pytest.approx(np.mean([0.7, 0.85]))
    assert last["sd"] == pytest.approx(np.std([0.7, 0.85], ddof=1))
    assert spread.loc[(0, "nscb"), "n_seeds"] == (1 if weights == "hub" else 2)

    report = (out_dir / "report.html").read_text()
    headline = report[: report.index("<h2>Metrics</h2>")]
    assert "mean (2)" in headline
    change_sd = np.std([0.2, 0.85 - (0.5 if weights == "hub" else 0.45)], ddof=1)
    assert f'<span class="ci">&plusmn; {change_sd:.3f}</span>' in headline
    mean, sd = np.mean([0.7, 0.85]), np.std([0.7, 0.85], ddof=1)
    assert f'<i>{mean:.3f}</i><br><span class="ci">&plusmn; {sd:.3f}</span>' in headline
    # epoch 0 over seeds: one shared evaluation has no sd
    assert ("<i>0.500</i></td>" in headline) == (weights == "hub")


def test_one_seed_writes_an_empty_seed_table_and_a_bad_seed_label_is_refused(tmp_path, capsys):
    paths = [write_run(tmp_path / "eval", "vit_s", "DAPI", e, 0.5) for e in (0, 2)]
    out_dir = summarise(tmp_path, paths, "--train-seeds", json.dumps({"vit_s": [0]}))
    assert pd.read_csv(out_dir / "seeds.csv").empty  # header only
    assert set(pd.read_csv(out_dir / "summary.csv")["seed"]) == {0}
    assert "mean (" not in (out_dir / "report.html").read_text()

    bad = json.loads(paths[1].read_text())
    paths[1].write_text(json.dumps({**bad, "label": "vit_s/DAPI/seedx/0002"}))
    assert (
        cli.main(
            [
                "--metrics",
                *map(str, paths),
                "--validation-report",
                str(tmp_path / "validation_report.json"),
                "--out-dir",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "arch/channel/seed_S/NNNN" in capsys.readouterr().err


def test_predictions_that_do_not_give_the_metric_are_refused(tmp_path, capsys):
    paths = [write_run(tmp_path / "eval", "vit_s", "DAPI", e, 0.5) for e in (0, 2)]
    predictions = paths[1].parent / "predictions.csv"
    table = pd.read_csv(predictions)
    table.loc[0, "correct"] = not table.loc[0, "correct"]
    table.to_csv(predictions, index=False)
    validation = tmp_path / "v.json"
    validation.write_text("{}")
    args = ["--metrics", *map(str, paths), "--validation-report", str(validation)]
    assert cli.main([*args, "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(predictions) in err and "metrics.json" in err
    assert not (tmp_path / "out").exists()
    predictions.unlink()
    assert cli.main([*args, "--out-dir", str(tmp_path / "out")]) == 2
    assert "predictions.csv: file not found" in capsys.readouterr().err
    for bad in ('{"resamples": 0}', '{"confidence": 1}', '{"level": 0.9}'):
        assert cli.main([*args, "--out-dir", str(tmp_path / "o"), "--bootstrap", bad]) == 2
        assert "--bootstrap" in capsys.readouterr().err


def test_another_seeds_training_log_is_read_from_its_folder(tmp_path):
    first = write_train_log(tmp_path / "train", "vit_s", "DAPI", {1: None, 2: None})
    other = write_train_log(tmp_path / "train" / "vit_s", "DAPI", "seed_4", {1: "uniform"})
    health = read_training_logs([first, other], {"vit_s": 0})
    assert sorted(zip(health["seed"], health["epoch"])) == [(0, 1), (0, 2), (4, 1)]
    assert set(health["channel"]) == {"DAPI"} and set(health["arch"]) == {"vit_s"}
