"""Synthetic profile tables with the conditioning of real ones, for the evaluation tests and
benchmarks/bench_eval.py.

`cellprofiler_like_table`: per-well, BBBC021-shaped (10 weeks x 3 plates; 330 DMSO wells, 11 per
plate; 38 compounds, 103 treatments, 12 MoAs, 2 of them in a single week; each treatment in 3
wells on 3 plates of its week), 516 features whose DMSO variances span `variance_orders` orders
of magnitude (a few huge-scale features such as areas in pixels^2, most small), positive offsets.
`vit_like_table`: per-image, same design, 384 features of which `massive` dimensions are
`massive_scale` times the others (ViT "massive activations").

Both: a latent MoA signal (MoA direction + compound-specific part, growing with dose), week and
plate effects and well/image noise, mixed into all features; so the MoA is recoverable only
after the nuisance (control) variation is whitened away.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

WEEKS = [f"Week{k}" for k in range(1, 11)]
PLATES_PER_WEEK = 3
N_MOAS = 12
N_COMPOUNDS = 38
SINGLE_WEEK_MOAS = (10, 11)
CONCENTRATIONS = (0.3, 1.0, 3.0)


def design(rows_per_well: int, dmso_per_plate: int) -> pd.DataFrame:
    """Metadata rows: compound, concentration, moa, plate, well, site, batch, is_control."""
    rows = []
    for c in range(N_COMPOUNDS):
        moa = c % N_MOAS
        week = WEEKS[(moa * 3) % 10] if moa in SINGLE_WEEK_MOAS else WEEKS[c % 10]
        doses = CONCENTRATIONS if c < 27 else CONCENTRATIONS[1:]  # 27 x 3 + 11 x 2 = 103
        for d, dose in enumerate(doses):
            for p in range(PLATES_PER_WEEK):
                well = f"C{c:02d}D{d}"
                for site in range(rows_per_well):
                    rows.append(
                        (f"cpd{c:02d}", dose, f"MoA {moa:02d}", f"{week}_P{p}", well, site, week)
                    )
    for week in WEEKS:
        for p in range(PLATES_PER_WEEK):
            for w in range(dmso_per_plate):
                for site in range(rows_per_well):
                    rows.append(("DMSO", 0.0, "DMSO", f"{week}_P{p}", f"DMSO{w:02d}", site, week))
    table = pd.DataFrame(
        rows, columns=["compound", "concentration", "moa", "plate", "well", "site", "batch"]
    )
    table["is_control"] = table["compound"] == "DMSO"
    return table


def latent_profiles(
    table: pd.DataFrame, latent_dim: int, rng: np.random.Generator, signal: float
) -> np.ndarray:
    """(rows, latent_dim): MoA + compound signal x dose, week and plate effects, noise."""
    moa_axis = {m: rng.normal(size=latent_dim) for m in table["moa"].unique()}
    compound_axis = {c: rng.normal(scale=0.7, size=latent_dim) for c in table["compound"].unique()}
    week_effect = {b: rng.normal(scale=1.0, size=latent_dim) for b in table["batch"].unique()}
    plate_effect = {p: rng.normal(scale=0.5, size=latent_dim) for p in table["plate"].unique()}
    dose = np.log10(table["concentration"].to_numpy() * 10 + 1e-12).clip(0) / np.log10(30)
    values = rng.normal(size=(len(table), latent_dim))
    for i, row in enumerate(table.itertuples()):
        values[i] += week_effect[row.batch] + plate_effect[row.plate]
        if not row.is_control:
            values[i] += signal * dose[i] * (moa_axis[row.moa] + compound_axis[row.compound])
    return values


def feature_signatures(
    table: pd.DataFrame, n_features: int, rng: np.random.Generator, strength: float
) -> np.ndarray:
    """(rows, n_features): each MoA (and, weaker, each compound) shifts every feature a little,
    growing with dose; zero for controls. Such shifts lie mostly along directions in which the
    controls barely vary: what TVN's whitening is there to bring out."""
    moa_shift = {m: rng.normal(size=n_features) for m in table["moa"].unique()}
    compound_shift = {c: rng.normal(scale=0.5, size=n_features) for c in table["compound"].unique()}
    dose = np.log10(table["concentration"].to_numpy() * 10 + 1e-12).clip(0) / np.log10(30)
    shifts = np.zeros((len(table), n_features))
    for i, row in enumerate(table.itertuples()):
        if not row.is_control:
            shifts[i] = strength * dose[i] * (moa_shift[row.moa] + compound_shift[row.compound])
    return shifts


def mix(
    latent: np.ndarray, n_features: int, rng: np.random.Generator, noise: float, groups: int = 1
) -> np.ndarray:
    """Every feature a random mixture of the latent factors of its group plus its own noise;
    with `groups` > 1 the factors and features are split into that many groups (CellProfiler's
    feature families: each measures its own aspect of the cell)."""
    factor_group = np.arange(latent.shape[1]) % groups
    feature_group = np.arange(n_features) % groups
    mixing = rng.normal(size=(latent.shape[1], n_features))
    mixing *= factor_group[:, None] == feature_group[None, :]
    mixing /= np.sqrt((mixing != 0).sum(axis=0, keepdims=True))
    return latent @ mixing + rng.normal(scale=noise, size=(len(latent), n_features))


def cellprofiler_like_table(
    seed: int = 0,
    n_features: int = 516,
    variance_orders: float = 15.0,
    signal: float = 1.0,
    signature: float = 0.2,
    groups: int = 12,
    dmso_per_plate: int = 11,
) -> pd.DataFrame:
    """Feature families (`groups`) on scales spread over `variance_orders` orders of magnitude
    of DMSO variance (log10 std of a family uniform, +- 0.5 within it)."""
    rng = np.random.default_rng(seed)
    table = design(rows_per_well=1, dmso_per_plate=dmso_per_plate)
    values = mix(latent_profiles(table, 48, rng, signal), n_features, rng, noise=0.3, groups=groups)
    values += feature_signatures(table, n_features, rng, strength=signature)
    half = variance_orders / 4  # log10 std spans -half .. half
    family_log_std = np.linspace(-half + 0.5, half - 0.5, groups)
    rng.shuffle(family_log_std)
    log_std = family_log_std[np.arange(n_features) % groups] + rng.uniform(-0.5, 0.5, n_features)
    log_std[[0, 1]] = -half, half  # the extremes, so the span is exactly variance_orders
    scale = 10.0**log_std
    values = values * scale + 20 * scale  # positive, like intensities and areas
    features = pd.DataFrame(values, columns=[f"Cells_Feature{j:03d}" for j in range(n_features)])
    return pd.concat([table, features], axis=1)


def vit_like_table(
    seed: int = 0,
    n_features: int = 384,
    massive: int = 4,
    massive_scale: float = 1e4,
    signal: float = 1.5,
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    table = design(rows_per_well=2, dmso_per_plate=8)  # 480 DMSO images > 384 features
    values = mix(latent_profiles(table, 40, rng, signal), n_features, rng, noise=1.0)
    values[:, :massive] = massive_scale * (values[:, :massive] + 5.0)
    features = pd.DataFrame(values, columns=[f"feat_{j:04d}" for j in range(n_features)])
    return pd.concat([table, features], axis=1)
