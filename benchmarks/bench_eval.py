"""Evaluation stage timings: NSC + NSCB + mAP on BBBC021-shaped profiles, and extraction throughput.

1. Metrics: a synthetic feature table shaped like real BBBC021 (10 batches, 55 plates, 38
   compounds / 103 treatments / 12 MoAs, ~3,800 images of which 1,320 DMSO, 384 features: the
   vit_small width). Times TVN, aggregation and NSC + NSCB + mAP (1000 permutations, config.yaml's
   default) separately, and the summary's error bars of that run (compound-bootstrap intervals of
   the 4 metrics, 1000 resamples) and one paired comparison (4 metrics); best of `--repeats`.
2. Conditioning (`--conditioning`): the CellProfiler-like and ViT-like tables of
   benchmarks/profile_tables.py (DMSO variances over 15 orders of magnitude; 4 dimensions at 1e4x;
   the CellProfiler-like one again with 990 instead of 330 DMSO wells),
   whitened three ways: the seed's rule (eigendecomposition of the DMSO covariance, components
   with eigenvalue > 1e-6 x the largest), the same with eps 0, and this workflow's TVN (SVD,
   numerical rank); prints components, max |whitened DMSO covariance - I|, NSC / NSCB, the
   NSC + NSCB neighbours that differ from sklearn's PCA(whiten=True), and the time of the
   whole evaluate_table (config.yaml defaults, 1000 permutations) for its 103 treatments.
3. Extraction: images/s of `workflow_scripts.evaluate.extract.extract_features` on a synthetic
   cache, for the demo's tiny ViT (depth 2, width 64, 64 px crops of 204x256 fields) and, with
   `--full`, for vit_small_patch16_dinov3 at its real size (224 px crops of 512x640 fields, the
   real cache at resize_factor 0.5). Runs on CUDA when available (bf16), else CPU (fp32). As
   the workflow runs it: the batch size and loader workers of config.yaml's evaluate section
   (the crops are cut and resized on the CPU by the workers; pinned memory on CUDA), unless
   --batch-size / --num-workers say otherwise.

    python benchmarks/bench_eval.py [--repeats 3] [--full] [--images 64] [--num-workers N]
        [--conditioning]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from workflow_scripts.evaluate.aggregate import treatment_profiles  # noqa: E402
from workflow_scripts.evaluate.extraction_memory import CPU_BATCH_SIZE  # noqa: E402
from workflow_scripts.evaluate.metrics import evaluate_profiles  # noqa: E402
from workflow_scripts.evaluate.pipeline import DEFAULT_SETTINGS, feature_matrix, image_metadata  # noqa: E402
from workflow_scripts.evaluate.tvn import apply_tvn  # noqa: E402
from workflow_scripts.summary import bootstrap, paired  # noqa: E402
from workflow_scripts.tables import feature_names  # noqa: E402

CLIP_MAX = 10000


def bbbc021_like_features(dim: int = 384, seed: int = 0) -> pd.DataFrame:
    """Treatments on 3 plates of one batch, 8 images per plate; 24 DMSO images per plate."""
    rng = np.random.default_rng(seed)
    batches = [f"Week{b + 1}" for b in range(10)]
    plates = {
        batch: [f"{batch}_{p}" for p in range(6 if b < 5 else 5)] for b, batch in enumerate(batches)
    }  # 55
    moa_signal = rng.normal(scale=0.04, size=(12, dim))  # weak: accuracies well below 1
    plate_offset = {
        plate: rng.normal(scale=0.1, size=dim) for ps in plates.values() for plate in ps
    }
    rows, values = [], []
    for compound in range(38):
        moa = compound % 12
        batch = batches[compound % 10]
        for concentration in (0.1, 1.0, 3.0)[: 3 if compound < 27 else 2]:  # 27 x 3 + 11 x 2 = 103
            for plate in rng.choice(plates[batch], size=3, replace=False):
                for _ in range(8):
                    rows.append((f"cpd{compound}", concentration, f"moa{moa}", plate, batch))
                    values.append(moa_signal[moa] + plate_offset[plate] + rng.normal(size=dim))
    for batch, batch_plates in plates.items():
        for plate in batch_plates:
            for _ in range(24):
                rows.append(("DMSO", 0.0, "DMSO", plate, batch))
                values.append(plate_offset[plate] + rng.normal(size=dim))
    table = pd.DataFrame(rows, columns=["compound", "concentration", "moa", "plate", "batch"])
    features = pd.DataFrame(np.asarray(values, dtype=np.float32), columns=feature_names(dim))
    return pd.concat([table, features], axis=1)


def best_time(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def bench_metrics(repeats: int) -> dict:
    features = bbbc021_like_features()
    meta = image_metadata(features, "synthetic")
    values = feature_matrix(features, feature_names(384), "synthetic")
    tvn_s, (whitened, _) = best_time(
        lambda: apply_tvn(values, meta["is_control"].to_numpy(), meta["batch"].to_numpy()), repeats
    )
    aggregate_s, (profiles, table) = best_time(lambda: treatment_profiles(whitened, meta), repeats)
    metrics_s, (metrics, predictions, _) = best_time(
        lambda: evaluate_profiles(profiles, table, DEFAULT_SETTINGS["map"]), repeats
    )
    # the summary's error bars of this run (4 metrics, config.yaml's 1000 resamples) and one
    # paired comparison (last epoch vs epoch 0: here the run against a reshuffled copy)
    settings = bootstrap.Settings(**bootstrap.DEFAULTS)
    intervals_s, _ = best_time(lambda: bootstrap.metric_intervals(predictions, settings), repeats)
    other = predictions.sample(frac=1, random_state=0)
    paired_s, _ = best_time(
        lambda: [paired.compare(predictions, other, m, settings) for m in bootstrap.OUTCOMES],
        repeats,
    )
    return {
        "images": len(features),
        "dmso": int(meta["is_control"].sum()),
        "treatments": len(table),
        "plates": int(meta["plate"].nunique()),
        "batches": int(meta["batch"].nunique()),
        "permutations": DEFAULT_SETTINGS["map"]["permutations"],
        "tvn_s": round(tvn_s, 4),
        "aggregate_s": round(aggregate_s, 4),
        "nsc_nscb_map_s": round(metrics_s, 4),
        "bootstrap_intervals_s": round(intervals_s, 4),
        "paired_comparison_s": round(paired_s, 4),
        "nsc": round(metrics["nsc"], 3),
        "nscb": round(metrics["nscb"], 3),
        "map_nscb": round(metrics["map_nscb"], 3),
    }


def covariance_eigh_whitening(values: np.ndarray, is_control: np.ndarray, eps: float) -> np.ndarray:
    """The seed's TVN, for comparison: eigenvectors of the DMSO covariance, components with
    eigenvalue > eps x the largest (at most n_dmso - 1)."""
    dmso = values[is_control]
    mean = dmso.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(dmso, rowvar=False))
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    keep = min(int(np.count_nonzero(eigenvalues > eps * eigenvalues[0])), len(dmso) - 1)
    return (values - mean) @ (eigenvectors[:, :keep] / np.sqrt(eigenvalues[:keep]))


def correct_of(result: dict, protocol: str) -> str:
    """'correct/treatments' of NSC or NSCB."""
    total = result[f"n_treatments_{protocol}"]
    return f"{round(result[protocol] * total)}/{total}"


def bench_conditioning() -> list[dict]:
    from profile_tables import cellprofiler_like_table, vit_like_table
    from sklearn.decomposition import PCA

    from workflow_scripts.evaluate.pipeline import evaluate_table
    from workflow_scripts.evaluate.tvn import whiten

    rows = []
    tables = (
        ("cellprofiler-like", cellprofiler_like_table()),
        ("vit-like", vit_like_table()),
        ("cellprofiler-like, 990 DMSO", cellprofiler_like_table(dmso_per_plate=33)),
    )
    for name, table in tables:
        columns = [c for c in table.columns if c.startswith(("Cells_", "feat_"))]
        values = table[columns].to_numpy(dtype=np.float64)
        is_control = table["is_control"].to_numpy()
        variances = values[is_control].var(axis=0)
        labels = table[["compound", "concentration", "moa", "plate", "batch"]]
        no_map = {"tvn": {"enabled": False}, "map": {"enabled": False}}

        def scored(whitened, labels=labels, no_map=no_map):
            whitened_table = pd.concat(
                [labels, pd.DataFrame(whitened, columns=feature_names(whitened.shape[1]))], axis=1
            )
            return evaluate_table(whitened_table, no_map)

        ours, report = whiten(values, is_control, table["batch"].to_numpy())
        sklearn = PCA(n_components=report["components"], whiten=True, svd_solver="full").fit(
            values[is_control]
        )
        reference = scored(sklearn.transform(values))["predictions"]
        for method, whitened in (
            (
                "seed: covariance eigh, eps 1e-6",
                covariance_eigh_whitening(values, is_control, 1e-6),
            ),
            ("covariance eigh, eps 0", covariance_eigh_whitening(values, is_control, 0.0)),
            ("this workflow: SVD, numerical rank", ours),
        ):
            result = scored(whitened)
            covariance = np.cov(whitened[is_control], rowvar=False)
            differ = (
                result["predictions"]["neighbour"].to_numpy() != reference["neighbour"].to_numpy()
            )
            rows.append(
                {
                    "table": name,
                    "method": method,
                    "rows": len(table),
                    "dmso": int(is_control.sum()),
                    "features": len(columns),
                    "dmso_variance_orders": round(
                        float(np.log10(variances.max() / variances.min())), 1
                    ),
                    "components": whitened.shape[1],
                    "max_abs_cov_minus_identity": float(
                        np.abs(covariance - np.eye(len(covariance))).max()
                    ),
                    "nsc": correct_of(result, "nsc"),
                    "nscb": correct_of(result, "nscb"),
                    "nsc_nscb_neighbours_differing_from_sklearn": int(differ.sum()),
                }
            )
        for normalization in ("standardize", "mad_robustize"):
            result = evaluate_table(
                table,
                {"normalization": {"method": normalization}, "map": {"enabled": False}},
                columns,
            )
            rows.append(
                {
                    "table": name,
                    "method": f"this workflow + normalization {normalization}",
                    "components": result["tvn_components"],
                    "nsc": correct_of(result, "nsc"),
                    "nscb": correct_of(result, "nscb"),
                }
            )
        start = time.perf_counter()
        result = evaluate_table(table, {}, columns)
        rows.append(
            {
                "table": name,
                "method": "evaluate_table, config.yaml defaults (1000 permutations)",
                "treatments": result["n_treatments_nsc"],
                "seconds": round(time.perf_counter() - start, 2),
                "map_nsc": round(result["map_nsc"], 3),
                "map_nscb": round(result["map_nscb"], 3),
            }
        )
    return rows


def bench_extraction(
    name: str,
    model_kwargs: dict,
    shape: tuple[int, int],
    input_size: int,
    n_images: int,
    batch_size: int,
    num_workers: int,
) -> dict:
    from workflow_scripts.evaluate.extract import extract_features
    from workflow_scripts.model.backbone import build_backbone

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build_backbone("vit_small_patch16_dinov3.lvd1689m", "none", model_kwargs)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "DAPI.npy"
        np.save(path, rng.integers(0, CLIP_MAX, size=(n_images, *shape), dtype=np.uint16))
        array = np.load(path, mmap_mode="r")
        settings = {
            "crops": "grid",
            "crop_grid": [2, 2],
            "input_size": input_size,
            "embedding": "cls",
            "crop_median": "lower",
        }
        loader = {"interpolation": "bicubic", "batch_size": batch_size, "num_workers": num_workers}
        # warm-up (CUDA context, kernels); worker start-up stays in the timed run, as in a job
        extract_features(model, [array[:batch_size]], CLIP_MAX, settings, device, "none", **loader)
        start = time.perf_counter()
        features = extract_features(model, [array], CLIP_MAX, settings, device, "none", **loader)
        seconds = time.perf_counter() - start
    return {
        "model": name,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "images": n_images,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "field": f"{shape[0]}x{shape[1]}",
        "crops_per_image": 4,
        "input_size": input_size,
        "feature_dim": features.shape[1],
        "images_per_s": round(n_images / seconds, 1),
    }


def main() -> None:
    with open(REPO / "config.yaml") as fh:
        workflow = yaml.safe_load(fh)["evaluate"]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=64, help="images for each extraction run")
    parser.add_argument(
        "--full", action="store_true", help="also vit_small at its real size, 224 px"
    )
    parser.add_argument(
        "--conditioning",
        action="store_true",
        help="only the TVN conditioning comparison on the synthetic tables",
    )
    configured = workflow["batch_size"]
    parser.add_argument(
        "--batch-size",
        type=int,
        # `auto` plans against a GPU's memory; this benchmark times a fixed batch
        default=CPU_BATCH_SIZE if configured == "auto" else configured,
        help="extraction batch (default: config.yaml evaluate.batch_size; its CPU value "
        "when that is auto)",
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        default=workflow["num_workers"],
        help="extraction loader workers (default: config.yaml evaluate.num_workers)",
    )
    args = parser.parse_args()
    if args.conditioning:
        for row in bench_conditioning():
            print(json.dumps(row))
        return
    loader = {"batch_size": args.batch_size, "num_workers": args.num_workers}

    print(json.dumps({"metrics": bench_metrics(args.repeats)}, indent=2))
    tiny = bench_extraction(
        "tiny ViT (depth 2, width 64)",
        {"depth": 2, "embed_dim": 64, "num_heads": 2},
        (204, 256),
        64,
        args.images,
        **loader,
    )
    print(json.dumps({"extraction": tiny}, indent=2))
    if args.full:
        full = bench_extraction(
            "vit_small_patch16_dinov3", {}, (512, 640), 224, args.images, **loader
        )
        print(json.dumps({"extraction": full}, indent=2))


if __name__ == "__main__":
    main()
