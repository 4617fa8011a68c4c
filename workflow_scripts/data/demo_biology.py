"""What a demo treatment does to MCF-7 cells: MoA phenotypes, dose, compound, weekly culture drift.

A well's cell population is described by the morphology parameters of DMSO_POPULATION. Each MoA
shifts a few of them, in the channel where BBBC021's MoAs show (Caie et al. 2010; Ljosa et al.
2013): nuclear size, count and fragmentation in DAPI, microtubule density, bundles and asters in
Tubulin, stress fibres, cortical rings and aggregates in Actin. A compound moves the parameters
by its MoA's shift times a Hill dose response, with its own potency, its own per-parameter
efficacy and small off-target effects, so compounds of one MoA are similar but not identical.
"""

from __future__ import annotations

import zlib

import numpy as np

# Population parameters of DMSO-treated cells; the renderer (demo_cells) reads these names.
DMSO_POPULATION: dict[str, float] = {
    "density": 1.0,  # cells per field, relative
    "clustering": 0.0,  # fraction of cells growing in compact islands
    "mitotic": 0.04,  # fraction of rounded mitotic cells with condensed chromatin
    "apoptotic": 0.02,  # fraction of shrunken cells with fragmented nuclei
    "multinucleate": 0.02,  # fraction of cells with two nuclei
    "spindle_poles": 2.0,  # mean poles per mitotic cell (1: monoaster, 0: none, 3+: multipolar)
    "cell_size": 1.0,  # cell radius, relative
    "elongation": 1.4,  # cell axis ratio
    "nucleus_size": 1.0,  # nuclear radius, relative
    "nucleus_brightness": 1.0,  # DNA stain per nucleus, relative
    "chromatin_texture": 0.25,  # contrast of chromatin granules
    "tubulin_diffuse": 1.0,  # unpolymerised tubulin in the cytoplasm
    "tubulin_filaments": 1.0,  # microtubules radiating from the centrosome
    "tubulin_bundles": 0.0,  # thick stabilised bundles, also along the cell periphery
    "tubulin_centrosome": 1.0,  # brightness and size of the centrosome (aggresome when high)
    "actin_diffuse": 1.0,
    "actin_cortex": 1.0,  # cortical actin ring
    "actin_fibres": 1.0,  # stress fibres along the cell axis
    "actin_puncta": 0.0,  # actin aggregates
}

# Typical size of a meaningful change per parameter: scales off-target and well-to-well noise.
PARAMETER_SCALE: dict[str, float] = {
    "density": 0.5,
    "clustering": 0.3,
    "mitotic": 0.1,
    "apoptotic": 0.05,
    "multinucleate": 0.1,
    "spindle_poles": 0.5,
    "cell_size": 0.3,
    "elongation": 0.4,
    "nucleus_size": 0.3,
    "nucleus_brightness": 0.3,
    "chromatin_texture": 0.2,
    "tubulin_diffuse": 0.4,
    "tubulin_filaments": 0.4,
    "tubulin_bundles": 0.3,
    "tubulin_centrosome": 0.5,
    "actin_diffuse": 0.4,
    "actin_cortex": 0.4,
    "actin_fibres": 0.4,
    "actin_puncta": 0.3,
}

PARAMETER_RANGE: dict[str, tuple[float, float]] = {
    "density": (0.2, 2.5),
    "clustering": (0.0, 1.0),
    "mitotic": (0.0, 0.8),
    "apoptotic": (0.0, 0.5),
    "multinucleate": (0.0, 0.8),
    "spindle_poles": (0.0, 4.0),
    "cell_size": (0.5, 2.0),
    "elongation": (1.0, 3.5),
    "nucleus_size": (0.5, 2.0),
    "nucleus_brightness": (0.3, 2.5),
    "chromatin_texture": (0.0, 1.2),
}

# Shift of the population parameters at full effect, per MoA.
MOA_PHENOTYPES: dict[str, dict[str, float]] = {
    "Actin disruptors": {
        "actin_fibres": -0.9,
        "actin_cortex": -0.5,
        "actin_puncta": 1.4,
        "actin_diffuse": -0.3,
        "cell_size": -0.2,
        "elongation": 0.5,
    },
    "Aurora kinase inhibitors": {  # failed cytokinesis: large polyploid, multinucleate cells
        "multinucleate": 0.5,
        "nucleus_size": 0.6,
        "nucleus_brightness": 0.4,
        "cell_size": 0.45,
        "density": -0.45,
        "elongation": -0.2,
    },
    "Cholesterol-lowering": {  # rounded cells with a strong cortex
        "cell_size": -0.25,
        "elongation": -0.35,
        "actin_cortex": 0.8,
        "actin_fibres": -0.5,
        "tubulin_filaments": -0.3,
        "density": -0.15,
    },
    "DNA damage": {  # large flat arrested cells, some apoptosis
        "nucleus_size": 0.45,
        "cell_size": 0.5,
        "density": -0.4,
        "apoptotic": 0.12,
        "chromatin_texture": 0.25,
        "actin_fibres": 0.6,
        "elongation": -0.15,
    },
    "DNA replication": {  # S-phase arrest: larger nuclei with speckled chromatin
        "nucleus_size": 0.3,
        "nucleus_brightness": -0.25,
        "chromatin_texture": 0.55,
        "density": -0.3,
        "cell_size": 0.15,
        "apoptotic": 0.05,
    },
    "Eg5 inhibitors": {  # mitotic arrest with monopolar spindles (chromosome rosettes)
        "mitotic": 0.45,
        "spindle_poles": -1.0,
        "density": -0.1,
    },
    "Epithelial": {  # compact islands with junctional actin
        "clustering": 0.85,
        "cell_size": -0.2,
        "actin_cortex": 0.7,
        "elongation": -0.3,
        "density": 0.25,
        "actin_fibres": -0.3,
    },
    "Kinase inhibitors": {  # spindly cells with long microtubule-rich processes
        "elongation": 0.9,
        "tubulin_filaments": 0.4,
        "actin_fibres": -0.4,
        "cell_size": 0.1,
        "actin_cortex": -0.3,
    },
    "Microtubule destabilizers": {  # no microtubules, mitotic arrest without spindle
        "tubulin_filaments": -0.9,
        "tubulin_diffuse": 0.5,
        "tubulin_centrosome": -0.5,
        "mitotic": 0.35,
        "spindle_poles": -2.0,
        "apoptotic": 0.05,
        "elongation": -0.2,
    },
    "Microtubule stabilizers": {  # microtubule bundles, multipolar mitoses
        "tubulin_bundles": 1.0,
        "tubulin_filaments": 0.3,
        "tubulin_diffuse": -0.3,
        "mitotic": 0.3,
        "spindle_poles": 1.5,
        "multinucleate": 0.15,
    },
    "Protein degradation": {  # perinuclear aggresome at the centrosome
        "tubulin_centrosome": 2.0,
        "chromatin_texture": 0.2,
        "apoptotic": 0.08,
        "cell_size": -0.1,
        "actin_puncta": 0.3,
    },
    "Protein synthesis": {  # small, dim, sparse cells
        "density": -0.35,
        "cell_size": -0.3,
        "nucleus_size": -0.15,
        "nucleus_brightness": 0.25,
        "tubulin_diffuse": -0.35,
        "actin_diffuse": -0.35,
        "tubulin_filaments": -0.2,
        "mitotic": -0.03,
    },
}

HILL_COEFFICIENT = 1.0
EFFICACY_SPREAD = 0.25  # log-normal sigma of a compound's per-parameter efficacy
OFF_TARGET = 0.12  # off-target shift per parameter, in PARAMETER_SCALE units
POTENCY_SPREAD = 0.4  # log-normal sigma of EC50 around the compound's lowest BBBC021 dose
WELL_NOISE = 0.05  # well-to-well variation, in PARAMETER_SCALE units
WEEK_DRIFT = {"density": 0.15, "cell_size": 0.06, "elongation": 0.08}  # culture drift, absolute


def stable_seed(*parts: str | int) -> list[int]:
    """Seed material from strings and ints (Python's hash() of str changes between runs)."""
    return [zlib.crc32(str(p).encode()) for p in parts]


def dose_response(concentration: float, ec50: float) -> float:
    """Hill curve: fraction of the full phenotype at this dose."""
    if concentration <= 0:
        return 0.0
    return 1.0 / (1.0 + (ec50 / concentration) ** HILL_COEFFICIENT)


def compound_effect(
    compound: str, moa: str, lowest_dose: float, seed: int
) -> tuple[dict[str, float], float]:
    """A compound's full-effect shift of the population parameters and its EC50 (µM).

    EC50 sits near the compound's lowest BBBC021 dose: BBBC021 annotated every listed dose with
    its MoA, so even the lowest one shows about half the phenotype.
    """
    rng = np.random.default_rng(stable_seed(seed, "compound", compound))
    shift = {}
    for name, scale in PARAMETER_SCALE.items():
        on_target = MOA_PHENOTYPES[moa].get(name, 0.0) * rng.lognormal(0.0, EFFICACY_SPREAD)
        shift[name] = on_target + OFF_TARGET * scale * rng.normal()
    ec50 = lowest_dose * rng.lognormal(0.0, POTENCY_SPREAD)
    return shift, ec50


def clip_population(population: dict[str, float]) -> dict[str, float]:
    clipped = {}
    for name, value in population.items():
        low, high = PARAMETER_RANGE.get(name, (0.0, 4.0))
        clipped[name] = float(np.clip(value, low, high))
    return clipped


def treatment_population(
    shift: dict[str, float], ec50: float, concentration: float, strength: float
) -> dict[str, float]:
    """Population parameters of a treated well (before week drift and well noise)."""
    effect = strength * dose_response(concentration, ec50)
    return {name: base + effect * shift[name] for name, base in DMSO_POPULATION.items()}


def week_drift(week: int, seed: int, amount: float) -> dict[str, float]:
    """Culture differences between weeks (confluence, cell spreading), added to every well."""
    rng = np.random.default_rng(stable_seed(seed, "week-culture", week))
    return {name: amount * sigma * rng.normal() for name, sigma in WEEK_DRIFT.items()}


def well_population(
    population: dict[str, float], drift: dict[str, float], rng: np.random.Generator
) -> dict[str, float]:
    """A well's parameters: the treatment's, plus the week's drift, plus well-to-well noise."""
    noisy = {
        name: value + drift.get(name, 0.0) + WELL_NOISE * PARAMETER_SCALE[name] * rng.normal()
        for name, value in population.items()
    }
    return clip_population(noisy)
