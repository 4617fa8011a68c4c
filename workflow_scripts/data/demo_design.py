"""The demo dataset's experimental design: BBBC021's compounds, doses and MoAs on weekly plates.

BBBC021's layout, scaled down: every compound (all its doses) is imaged in one week, one
replicate well per plate on the `replicates` plates of that week; DMSO wells and the taxol 0.3 µM
plate control sit on every plate. The compounds of one MoA are spread over weeks, two of them
sharing a week (as BBBC021's etoposide and chlorambucil do), so NSCB is defined for every MoA but
`single_batch_moa`, whose compounds all share one week (BBBC021's statins, Week9) and which NSCB
therefore drops. This is `layout: synthetic` (the default); `layout: official` takes BBBC021's
own plates, wells and sites instead (demo_official.py, the rehearsal).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from workflow_scripts.errors import InputError
from workflow_scripts.tables import CONTROL_COMPOUND

# BBBC021_v1_moa.csv without DMSO: MoA -> compound -> doses (µM). Compounds are listed in the order
# the generator picks them (most doses first), doses ascending.
BBBC021_DESIGN: dict[str, dict[str, tuple[float, ...]]] = {
    "Actin disruptors": {
        "cytochalasin B": (10, 30),
        "latrunculin B": (1, 3),
        "cytochalasin D": (0.3,),
    },
    "Aurora kinase inhibitors": {
        "AZ-A": (0.1, 0.3, 1, 3, 10, 30),
        "AZ258": (0.1, 0.3, 1),
        "AZ841": (0.1, 0.3, 1),
    },
    "Cholesterol-lowering": {
        "mevinolin/lovastatin": (1.5, 5, 15),
        "simvastatin": (2, 6, 20),
    },
    "DNA damage": {
        "mitomycin C": (0.1, 0.3, 1, 3),
        "etoposide": (1, 3, 10),
        "chlorambucil": (10,),
        "cisplatin": (10,),
    },
    "DNA replication": {
        "camptothecin": (0.003, 0.01, 0.03),
        "floxuridine": (10, 30),
        "mitoxantrone": (0.003, 0.01),
        "methotrexate": (10,),
    },
    "Eg5 inhibitors": {
        "AZ-C": (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1),
        "AZ138": (0.03, 0.1, 0.3, 1, 3),
    },
    "Epithelial": {
        "AZ-J": (1, 3, 10),
        "AZ-U": (1, 3, 10),
        "PP-2": (3, 10),
    },
    "Kinase inhibitors": {
        "PD-169316": (3, 10),
        "alsterpaullone": (1, 3),
        "bryostatin": (0.3,),
    },
    "Microtubule destabilizers": {
        "vincristine": (0.003, 0.01, 0.03, 0.1, 0.3, 1, 3),
        "demecolcine": (0.3, 1, 3, 10),
        "nocodazole": (1, 3),
        "colchicine": (0.03,),
    },
    "Microtubule stabilizers": {
        "docetaxel": (0.03, 0.1, 0.3),
        "epothilone B": (0.1, 0.3, 1),
        "taxol": (0.3, 1, 3),
    },
    "Protein degradation": {
        "ALLN": (3, 100),
        "MG-132": (0.1, 3),
        "proteasome inhibitor I": (0.1, 3),
        "lactacystin": (10,),
    },
    "Protein synthesis": {
        "emetine": (0.1, 0.3, 1),
        "cyclohexamide": (5, 15, 50),
        "anisomycin": (0.3, 1),
    },
}
PLATE_CONTROL = ("taxol", 0.3, "Microtubule stabilizers")  # on every BBBC021 plate

# BBBC021 images the 60 inner wells of a 96-well plate (rows B-G, columns 2-11).
PLATE_WELLS = [f"{row}{col:02d}" for row in "BCDEFG" for col in range(2, 12)]

# Keys of config `data.demo`, with their defaults (the demo config uses these).
DEFAULT_SETTINGS: dict[str, Any] = {
    # synthetic: the scaled-down design of this module; official: BBBC021's own plates, wells,
    # sites and file names, read from data.official.image_table / moa_table (demo_official.py)
    "layout": "synthetic",
    "seed": 0,  # seeds everything random: cells, batch effects, well layout, file UUIDs
    "moas": "all",  # "all" or a list of BBBC021 MoA names (official: DMSO wells always kept)
    "plates": "all",  # official layout: "all" or a list of BBBC021 plates (Week1_22123, ...)
    "compounds_per_moa": 3,  # at most; BBBC021 has fewer for some MoAs
    "concentrations_per_compound": 2,  # the highest doses of each compound
    "n_weeks": 3,  # batches
    "replicates": 2,  # plates per week; each holds one well of every treatment of its week
    "sites_per_well": 4,  # official layout: sites 1..N of BBBC021's 4 (N/4 of the fields)
    "dmso_wells_per_plate": 6,  # as on BBBC021 plates
    "single_batch_moa": "Cholesterol-lowering",  # all its compounds in one week; null: none
    "cells_per_megapixel": 450,  # DMSO cell density (about 23 cells in a 204 x 256 field)
    "phenotype_strength": 1.0,  # scales every compound effect; 0 gives DMSO-like images
    "batch_effect": 1.0,  # scales week-to-week microscope and culture differences
}

LAYOUTS = ("synthetic", "official")
# Settings of the synthetic design only: with layout official BBBC021's table fixes them.
SYNTHETIC_ONLY = (
    "compounds_per_moa",
    "concentrations_per_compound",
    "n_weeks",
    "replicates",
    "dmso_wells_per_plate",
    "single_batch_moa",
)

INTEGER_MINIMUM = {
    "seed": 0,
    "compounds_per_moa": 1,
    "concentrations_per_compound": 1,
    "n_weeks": 2,  # NSCB needs two batches
    "replicates": 1,
    "sites_per_well": 1,
    "dmso_wells_per_plate": 1,
}


def settings_with_defaults(settings: dict[str, Any]) -> dict[str, Any]:
    """Validate config `data.demo` and fill in defaults; errors name the key."""
    if not isinstance(settings, dict):
        raise InputError("config key 'data.demo': must be a mapping")
    unknown = sorted(set(settings) - set(DEFAULT_SETTINGS))
    if unknown:
        raise InputError(
            f"config key 'data.demo.{unknown[0]}': unknown setting; "
            f"valid keys: {', '.join(DEFAULT_SETTINGS)}"
        )
    merged = {**DEFAULT_SETTINGS, **settings}
    official = _check_layout(settings, merged)
    for key, low in INTEGER_MINIMUM.items():
        value = merged[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise InputError(
                f"config key 'data.demo.{key}': expected an integer >= {low}, got {value!r}"
            )
    for key in ("cells_per_megapixel", "phenotype_strength", "batch_effect"):
        value = merged[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise InputError(f"config key 'data.demo.{key}': expected a number >= 0, got {value!r}")
    if merged["cells_per_megapixel"] == 0:
        raise InputError("config key 'data.demo.cells_per_megapixel': must be > 0")
    if merged["moas"] == "all":
        merged["moas"] = list(BBBC021_DESIGN)
    if not isinstance(merged["moas"], list) or not merged["moas"]:
        raise InputError(
            "config key 'data.demo.moas': expected 'all' or a non-empty list of MoA names"
        )
    for moa in merged["moas"]:
        if moa not in BBBC021_DESIGN:
            raise InputError(
                f"config key 'data.demo.moas': unknown MoA {moa!r}; "
                f"BBBC021 MoAs: {', '.join(BBBC021_DESIGN)}"
            )
    if len(set(merged["moas"])) != len(merged["moas"]):
        raise InputError("config key 'data.demo.moas': an MoA is listed twice")
    single = merged["single_batch_moa"]
    if not official and single is not None and single not in merged["moas"]:
        raise InputError(
            f"config key 'data.demo.single_batch_moa': {single!r} is not among data.demo.moas"
        )
    return merged


def _check_layout(settings: dict[str, Any], merged: dict[str, Any]) -> bool:
    """`layout` and the keys that belong to one layout only; True for the official layout."""
    if merged["layout"] not in LAYOUTS:
        raise InputError(
            f"config key 'data.demo.layout': expected one of {', '.join(LAYOUTS)}, "
            f"got {merged['layout']!r}"
        )
    official = merged["layout"] == "official"
    if official:
        given = [key for key in SYNTHETIC_ONLY if key in settings]
        if given:
            raise InputError(
                f"config key 'data.demo.{given[0]}': a setting of the synthetic layout; "
                "layout official takes BBBC021's design (choose with plates, sites_per_well, moas)"
            )
    elif merged["plates"] != "all":
        raise InputError(
            "config key 'data.demo.plates': chooses BBBC021 plates of layout official only"
        )
    plates = merged["plates"]
    if plates != "all" and (
        not isinstance(plates, list)
        or not plates
        or not all(isinstance(p, str) for p in plates)
        or len(set(plates)) != len(plates)
    ):
        raise InputError(
            "config key 'data.demo.plates': expected 'all' or a list of distinct plate names, "
            f"got {plates!r}"
        )
    return official


def treatments(settings: dict[str, Any]) -> pd.DataFrame:
    """Compounds, doses and MoAs of the demo, each compound assigned to one week.

    Columns: compound, concentration, moa, week (1-based). Without DMSO and the plate control.
    """
    n_weeks = settings["n_weeks"]
    rows = []
    for moa_index, moa in enumerate(settings["moas"]):
        compounds = list(BBBC021_DESIGN[moa].items())[: settings["compounds_per_moa"]]
        for compound_index, (compound, doses) in enumerate(compounds):
            if moa == settings["single_batch_moa"]:
                week_offset = 0
            elif len(compounds) == 2:
                week_offset = compound_index
            else:  # the first two compounds share a week, the others go to the following weeks
                week_offset = max(compound_index - 1, 0)
            week = (moa_index + week_offset) % n_weeks + 1
            for dose in doses[-settings["concentrations_per_compound"] :]:
                if (compound, float(dose)) == PLATE_CONTROL[:2]:
                    continue  # on every plate anyway
                rows.append(
                    {"compound": compound, "concentration": float(dose), "moa": moa, "week": week}
                )
    return pd.DataFrame(rows)


def plate_name(week: int, replicate: int) -> str:
    """`Week{k}_{id}`; ids are five digits, increasing over weeks as BBBC021's do."""
    return f"Week{week}_{20000 + 1200 * week + 20 * replicate + 1}"


def field_layout(settings: dict[str, Any], rng) -> pd.DataFrame:
    """One row per field of view: week, plate, replicate, well, site, compound, concentration, moa.

    Well positions are shuffled per plate (`rng`), so no treatment sits at a fixed plate position.
    """
    design = treatments(settings)
    control_compound, control_dose, control_moa = PLATE_CONTROL
    rows = []
    for week in range(1, settings["n_weeks"] + 1):
        week_treatments = design[design["week"] == week]
        contents = [(control_compound, control_dose, control_moa)]
        contents += [(CONTROL_COMPOUND, 0.0, CONTROL_COMPOUND)] * settings["dmso_wells_per_plate"]
        contents += list(
            week_treatments[["compound", "concentration", "moa"]].itertuples(index=False)
        )
        if len(contents) > len(PLATE_WELLS):
            raise InputError(
                f"config key 'data.demo': Week{week} needs {len(contents)} wells per plate, "
                f"a BBBC021 plate has {len(PLATE_WELLS)}; raise data.demo.n_weeks or lower "
                "data.demo.compounds_per_moa / concentrations_per_compound / dmso_wells_per_plate"
            )
        for replicate in range(1, settings["replicates"] + 1):
            plate = plate_name(week, replicate)
            wells = rng.permutation(len(PLATE_WELLS))[: len(contents)]
            for (compound, dose, moa), well_index in zip(contents, wells):
                for site in range(1, settings["sites_per_well"] + 1):
                    rows.append(
                        {
                            "week": week,
                            "plate": plate,
                            "replicate": replicate,
                            "well": PLATE_WELLS[well_index],
                            "site": site,
                            "compound": compound,
                            "concentration": float(dose),
                            "moa": moa,
                        }
                    )
    return pd.DataFrame(rows).sort_values(["week", "plate", "well", "site"], ignore_index=True)


def moa_table(settings: dict[str, Any]) -> pd.DataFrame:
    """BBBC021_v1_moa.csv rows of the demo: its treatments, the plate control and DMSO 0.0."""
    design = treatments(settings)[["compound", "concentration", "moa"]]
    extra = pd.DataFrame(
        [
            dict(zip(["compound", "concentration", "moa"], PLATE_CONTROL)),
            {"compound": CONTROL_COMPOUND, "concentration": 0.0, "moa": CONTROL_COMPOUND},
        ]
    )
    return pd.concat([design, extra], ignore_index=True)
