"""Hand-crafted profiles (the demo's external baseline): statistics against numpy / scipy, and
the CellProfiler-style table scored by the evaluation CLI through a metadata map."""

import json

import numpy as np
import pandas as pd
from scipy import ndimage
from test_eval_extract import cache_dir, design_table  # noqa: F401  (fixture)

from workflow_scripts.evaluate import evaluate, handcrafted


def test_statistics_agree_with_numpy_and_scipy():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, size=(64, 80)).astype(np.uint16)
    stats = dict(zip(handcrafted.STATISTICS, handcrafted.image_statistics(image)))
    values = image.astype(np.float64)
    np.testing.assert_allclose(stats["Intensity_Mean"], values.mean(), rtol=1e-6)
    np.testing.assert_allclose(stats["Intensity_Std"], values.std(), rtol=1e-5)
    for q in handcrafted.QUANTILES:
        np.testing.assert_allclose(
            stats[f"Intensity_Quantile{q:02d}"], np.percentile(values, q), rtol=1e-6
        )
    # Gaussian blurs by scipy (mirror borders, as OpenCV's default): texture at three scales
    blurred = [values] + [
        ndimage.gaussian_filter(values, s, mode="mirror", truncate=4) for s in (1, 2, 4)
    ]
    for (a, b), fine, coarse in zip([(0, 1), (1, 2), (2, 4)], blurred, blurred[1:]):
        np.testing.assert_allclose(
            stats[f"Texture_BlurDifference{a}to{b}"], np.abs(fine - coarse).mean(), rtol=0.02
        )
    sobel = np.hypot(
        ndimage.sobel(blurred[1], axis=1, mode="mirror"),
        ndimage.sobel(blurred[1], axis=0, mode="mirror"),
    )
    np.testing.assert_allclose(stats["Texture_GradientMean"], sobel.mean(), rtol=0.02)
    flat = handcrafted.image_statistics(np.full((32, 32), 500, dtype=np.uint16))
    texture = [k for k, name in enumerate(handcrafted.STATISTICS) if name.startswith("Texture")]
    np.testing.assert_allclose(flat[texture], 0, atol=1e-3)


def test_profile_table_is_scored_through_a_metadata_map(cache_dir, tmp_path):  # noqa: F811
    out = tmp_path / "profiles.csv"
    assert handcrafted.main(["--cache-dir", str(cache_dir), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    design = design_table()
    assert len(table) == len(design)
    assert table["Metadata_Compound"].tolist() == design["compound"].tolist()
    assert len([c for c in table.columns if c.startswith("Image_")]) == 3 * len(
        handcrafted.STATISTICS
    )
    np.testing.assert_allclose(
        table["Image_Intensity_Mean_Actin"][3],
        np.load(cache_dir / "Actin.npy")[3].astype(np.float64).mean(),
        rtol=1e-6,
    )
    mapping = ",".join(
        f"{ours}={theirs}"
        for ours, theirs in handcrafted.METADATA.items()
        if ours in ("compound", "concentration", "moa", "plate", "batch")
    )
    assert (
        evaluate.main(
            [
                "--features",
                str(out),
                "--feature-columns",
                "^Image_",
                "--metadata-map",
                mapping,
                "--settings",
                json.dumps({"map": {"enabled": False}}),
                "--out-dir",
                str(tmp_path / "eval"),
                "--label",
                "handcrafted/baseline/0000",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["feature_dim"] == 3 * len(handcrafted.STATISTICS) and metrics["n_images"] == len(
        design
    )
    assert metrics["n_treatments_nsc"] == 16
