"""Metadata preparation: official tables and seed CSVs -> the normalized image table."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from tiff_factory import CHANNELS, make_dataset, official_tables

from workflow_scripts.data import metadata
from workflow_scripts.errors import InputError
from workflow_scripts.tables import METADATA_COLUMNS, SORT_KEYS, path_column

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_TABLES = REPO / "data" / "bbbc021"  # the shipped official tables
ORIGIN = [metadata.SOURCE_TABLE, metadata.SOURCE_ROW]


def without_origin(table: pd.DataFrame) -> pd.DataFrame:
    """The documented image-table columns (validation drops the origin columns)."""
    return table.drop(columns=ORIGIN)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return root, make_dataset(root)


def official(dataset, tmp_path, edit=None, edit_moa=None):
    """Official-format tables for the synthetic dataset, optionally edited."""
    root, table = dataset
    image_csv, moa_csv = official_tables(table, root, tmp_path)
    if edit:
        raw = pd.read_csv(image_csv)
        edit(raw)
        raw.to_csv(image_csv, index=False)
    if edit_moa:
        moa = pd.read_csv(moa_csv)
        edit_moa(moa)
        moa.to_csv(moa_csv, index=False)
    return image_csv, moa_csv


def test_official_tables_give_the_published_bbbc021_subset():
    table = metadata.from_official(
        OFFICIAL_TABLES / "BBBC021_v1_image.csv.gz",
        OFFICIAL_TABLES / "BBBC021_v1_moa.csv",
        "/data/bbbc021",
        CHANNELS,
    )
    treated = table[~table["is_control"]]
    assert len(treated) == 2528
    assert int(table["is_control"].sum()) == 1320
    assert treated["treatment"].nunique() == 103
    assert treated["compound"].nunique() == 38
    assert treated["moa"].nunique() == 12
    assert set(table.loc[table["is_control"], "moa"]) == {"DMSO"}
    assert table["plate"].nunique() == 55
    assert table["batch"].nunique() == 10
    assert table["image_id"].is_unique
    assert list(table.columns) == METADATA_COLUMNS + [path_column(ch) for ch in CHANNELS] + ORIGIN
    assert table.equals(table.sort_values(SORT_KEYS).reset_index(drop=True))
    assert set(table["site"]) == {1, 2, 3, 4}
    # the table's first row (5-fluorouracil at 0.003) has no MoA annotation
    assert "Week4_27481/G10/s1" not in set(table["image_id"])
    # line 38: Week1/Week1_22123, Week1_150607_B11_s1_w1AF4E7ECE-...tif, taxol at 0.3
    row = table.set_index("image_id").loc["Week1_22123/B11/s1"]
    assert (row["batch"], row["replicate"], row["compound"], row["concentration"]) == (
        "Week1",
        1,
        "taxol",
        0.3,
    )
    assert (row["treatment"], row["moa"]) == ("taxol@0.3", "Microtubule stabilizers")
    assert row["path_Actin"] == (
        "/data/bbbc021/Week1/Week1_22123/Week1_150607_B11_s1_w4DE21EDFB-2D22-47B4-9BFD-C7FD61C7335B.tif"
    )
    # Week4 file names have no `Week*_<date>_` prefix
    assert (
        table.loc[table["batch"] == "Week4", "path_DAPI"]
        .str.contains(r"/Week4_\d+/[A-P]\d\d_s\d_w1")
        .all()
    )


def test_official_tables_round_trip(dataset, tmp_path):
    root, expected = dataset
    image_csv, moa_csv = official(dataset, tmp_path)
    table = metadata.from_official(image_csv, moa_csv, root, CHANNELS)
    pd.testing.assert_frame_equal(without_origin(table), expected)


def test_images_are_not_needed_and_paths_join_root(dataset, tmp_path):
    image_csv, moa_csv = official(dataset, tmp_path)
    table = metadata.from_official(image_csv, moa_csv, tmp_path / "elsewhere", ["Actin"])
    assert list(table.columns) == METADATA_COLUMNS + ["path_Actin"] + ORIGIN
    assert table["path_Actin"].str.startswith(str(tmp_path / "elsewhere" / "Week")).all()
    assert table["path_Actin"].str.contains(r"_w4[0-9A-F-]+\.tif$").all()


def test_unannotated_treatments_are_dropped_and_join_tolerates_float_noise(dataset, tmp_path):
    def edit(raw):
        raw.loc[raw["Image_Metadata_Compound"] == "emetine", "Image_Metadata_Compound"] = "unknown"
        # 1.0 +- float noise must still match the MoA table's 1.000000;
        # 0.3 -> 0.31 must not match 0.3
        taxol_1 = raw["Image_Metadata_Concentration"] == 1.0
        raw.loc[taxol_1, "Image_Metadata_Concentration"] = 1.0000000001
        raw.loc[raw["Image_Metadata_Concentration"] == 0.3, "Image_Metadata_Concentration"] = 0.31

    image_csv, moa_csv = official(dataset, tmp_path, edit=edit)
    table = metadata.from_official(image_csv, moa_csv, dataset[0], CHANNELS)
    assert set(table["treatment"]) == {"DMSO@0", "taxol@1"}
    assert len(table) == len(dataset[1]) // 2


def test_file_name_well_must_match_well_column(dataset, tmp_path):
    def edit(raw):
        raw.loc[3, "Image_Metadata_Well_DAPI"] = "H12"

    image_csv, moa_csv = official(dataset, tmp_path, edit=edit)
    with pytest.raises(InputError, match=r"row 3, column 'Image_FileName_DAPI'.* well .* says H12"):
        metadata.from_official(image_csv, moa_csv, dataset[0], CHANNELS)


def test_channels_must_agree_on_the_site(dataset, tmp_path):
    def edit(raw):
        raw.loc[5, "Image_FileName_Actin"] = re.sub(
            r"_s\d_", "_s3_", raw.loc[5, "Image_FileName_Actin"]
        )

    image_csv, moa_csv = official(dataset, tmp_path, edit=edit)
    with pytest.raises(InputError, match=r"row 5, column 'Image_FileName_Actin': site s3 differs"):
        metadata.from_official(image_csv, moa_csv, dataset[0], CHANNELS)


def test_unparseable_file_name(dataset, tmp_path):
    def edit(raw):
        raw.loc[0, "Image_FileName_Tubulin"] = "image0001.tif"

    image_csv, moa_csv = official(dataset, tmp_path, edit=edit)
    with pytest.raises(
        InputError, match=r"row 0, column 'Image_FileName_Tubulin': file name 'image0001.tif'"
    ):
        metadata.from_official(image_csv, moa_csv, dataset[0], CHANNELS)


def test_same_field_of_view_twice(dataset, tmp_path):
    def edit(raw):
        raw.loc[len(raw)] = raw.loc[2]

    image_csv, moa_csv = official(dataset, tmp_path, edit=edit)
    with pytest.raises(InputError, match=r"rows 2 and \d+ describe the same field of view"):
        metadata.from_official(image_csv, moa_csv, dataset[0], CHANNELS)


def test_moa_table_with_two_moas_for_one_treatment(dataset, tmp_path):
    def edit_moa(moa):
        moa.loc[len(moa)] = ["taxol", 1.0, "Actin disruptors"]

    image_csv, moa_csv = official(dataset, tmp_path, edit_moa=edit_moa)
    with pytest.raises(
        InputError, match=r"BBBC021_v1_moa.csv: row \d+: taxol at 1 has more than one MoA"
    ):
        metadata.from_official(image_csv, moa_csv, dataset[0], CHANNELS)


def test_missing_channel_column(dataset, tmp_path):
    image_csv, moa_csv = official(
        dataset, tmp_path, edit=lambda raw: raw.pop("Image_PathName_Actin")
    )
    with pytest.raises(
        InputError, match=r"BBBC021_v1_image.csv: missing column\(s\) Image_PathName_Actin"
    ):
        metadata.from_official(image_csv, moa_csv, dataset[0], CHANNELS)


def test_unknown_channel(dataset, tmp_path):
    image_csv, moa_csv = official(dataset, tmp_path)
    with pytest.raises(InputError, match=r"--channels: unknown channel name\(s\) GFP"):
        metadata.from_official(image_csv, moa_csv, dataset[0], ["DAPI", "GFP"])


def seed_tables(
    table: pd.DataFrame, folder: Path, relative_to: Path | None = None
) -> tuple[Path, Path]:
    """The seed's two CSVs for `table`: official columns, full paths in Image_FileName_*, MoA and
    integer codes; only the annotated table has Plate and Batch."""
    seed = pd.DataFrame(
        {
            "Image_Metadata_Plate_DAPI": table["plate"],
            "Image_Metadata_Well_DAPI": table["well"],
            "Replicate": table["replicate"],
            "Image_Metadata_Compound": table["compound"],
            "Image_Metadata_Concentration": table["concentration"],
        }
    )
    for ch in CHANNELS:
        paths = table[path_column(ch)]
        if relative_to is not None:
            paths = paths.map(lambda p: os.path.relpath(p, relative_to))
        seed[f"Image_FileName_{ch}"] = paths
        seed[f"Image_PathName_{ch}"] = paths.map(lambda p: str(Path(p).parent))
    treated = seed[~table["is_control"]].assign(
        MoA=table["moa"],
        Unique_MoA=table["moa"].astype("category").cat.codes,
        Unique_Treatments=table["treatment"].astype("category").cat.codes,
        Unique_Compounds=table["compound"].astype("category").cat.codes,
        Plate=table["plate"],
        Batch=table["batch"],
    )
    annotated, dmso = folder / "BBBC021_annotated_fixed.csv", folder / "BBBC021_DMSO_fixed.csv"
    treated.to_csv(annotated)  # the seed's CSVs carry a pandas index column
    seed[table["is_control"]].to_csv(dmso)
    return annotated, dmso


def test_seed_csvs_give_the_same_table(dataset, tmp_path):
    root, expected = dataset
    annotated, dmso = seed_tables(expected, tmp_path)
    table = metadata.from_seed_csv(annotated, dmso, CHANNELS)
    pd.testing.assert_frame_equal(without_origin(table), expected)


def test_seed_relative_paths_are_relative_to_the_csv(dataset):
    root, expected = dataset
    folder = root / "Week1"  # paths like Week1_22123/... and ../Week2/... from here
    annotated, dmso = seed_tables(expected, folder, relative_to=folder)
    relative = pd.read_csv(annotated)["Image_FileName_DAPI"]
    assert relative.str.startswith("../Week2/").any() and relative.str.startswith("Week1_").any()
    table = metadata.from_seed_csv(annotated, dmso, CHANNELS)
    pd.testing.assert_frame_equal(without_origin(table), expected)


def test_seed_annotated_row_without_moa(dataset, tmp_path):
    annotated, dmso = seed_tables(dataset[1], tmp_path)
    raw = pd.read_csv(annotated, index_col=0)
    raw.iloc[4, raw.columns.get_loc("MoA")] = None
    raw.to_csv(annotated)
    with pytest.raises(
        InputError, match=r"annotated_fixed.csv: row 4, column 'MoA': no mechanism of action"
    ):
        metadata.from_seed_csv(annotated, dmso, CHANNELS)


def test_seed_dmso_table_with_a_treatment(dataset, tmp_path):
    annotated, dmso = seed_tables(dataset[1], tmp_path)
    raw = pd.read_csv(dmso, index_col=0)
    raw.iloc[1, raw.columns.get_loc("Image_Metadata_Compound")] = "taxol"
    raw.to_csv(dmso)
    with pytest.raises(
        InputError, match=r"DMSO_fixed.csv: row 1, column 'Image_Metadata_Compound': 'taxol'"
    ):
        metadata.from_seed_csv(annotated, dmso, CHANNELS)


def test_cli_writes_table_and_reports_errors(dataset, tmp_path, capsys):
    image_csv, moa_csv = official(dataset, tmp_path)
    out = tmp_path / "prepared.parquet"
    argv = [
        "--source",
        "official",
        "--image-table",
        str(image_csv),
        "--moa-table",
        str(moa_csv),
        "--image-root",
        str(dataset[0]),
        "--channels",
        *CHANNELS,
        "--out",
        str(out),
    ]
    assert metadata.main(argv) == 0
    pd.testing.assert_frame_equal(without_origin(pd.read_parquet(out)), dataset[1])

    missing_root = tmp_path / "missing.parquet"
    assert (
        metadata.main(
            [
                "--source",
                "official",
                "--image-table",
                str(image_csv),
                "--channels",
                "DAPI",
                "--out",
                str(missing_root),
            ]
        )
        == 2
    )
    assert "error: --source official needs --moa-table, --image-root" in capsys.readouterr().err
    assert not missing_root.exists()


def test_module_runs_as_a_script(dataset, tmp_path):
    image_csv, moa_csv = official(dataset, tmp_path, edit=lambda raw: raw.pop("Replicate"))
    out = tmp_path / "prepared.parquet"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "workflow_scripts.data.metadata",
            "--source",
            "official",
            "--image-table",
            str(image_csv),
            "--moa-table",
            str(moa_csv),
            "--image-root",
            str(tmp_path),
            "--channels",
            "DAPI",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {image_csv}: missing column(s) Replicate"
    assert not out.exists() and not list(tmp_path.glob(".prepared*"))


def test_missing_path_value(dataset, tmp_path):
    def edit(raw):
        raw.loc[4, "Image_PathName_Tubulin"] = None

    image_csv, moa_csv = official(dataset, tmp_path, edit=edit)
    with pytest.raises(InputError, match=r"row 4, column 'Image_PathName_Tubulin': missing value"):
        metadata.from_official(image_csv, moa_csv, dataset[0], CHANNELS)


# ------------------------------------------------------------------ issue #11: silent acceptance
def test_a_treated_row_with_a_blank_concentration_is_an_error_not_dropped(dataset, tmp_path):
    def edit(raw):
        row = raw.index[raw["Image_Metadata_Compound"] != "DMSO"][2]
        raw.loc[row, "Image_Metadata_Concentration"] = None

    image_csv, moa_csv = official(dataset, tmp_path, edit=edit)
    row = pd.read_csv(image_csv)["Image_Metadata_Concentration"].isna().idxmax()
    message = rf"row {row}, column 'Image_Metadata_Concentration': missing"
    with pytest.raises(InputError, match=message):
        metadata.from_official(image_csv, moa_csv, dataset[0], CHANNELS)
    annotated, dmso = seed_tables(dataset[1], tmp_path)
    seed = pd.read_csv(annotated, index_col=0).reset_index(drop=True)
    seed.loc[1, "Image_Metadata_Concentration"] = None
    seed.to_csv(annotated, index=False)
    with pytest.raises(InputError, match=r"row 1, column 'Image_Metadata_Concentration': missing"):
        metadata.from_seed_csv(annotated, dmso, CHANNELS)


@pytest.mark.parametrize(
    "column, value",
    [
        ("Image_PathName_Tubulin", "Week1/../../../etc"),
        ("Image_PathName_Tubulin", ".."),
        ("Image_FileName_Tubulin", "../../G10_s1_w2.tif"),
        ("Image_FileName_Tubulin", "sub/G10_s1_w2.tif"),
    ],
)
def test_a_path_that_leaves_the_image_root_is_refused(dataset, tmp_path, column, value):
    def edit(raw):
        raw.loc[6, column] = value

    image_csv, moa_csv = official(dataset, tmp_path, edit=edit)
    with pytest.raises(
        InputError,
        match=rf"{re.escape(str(image_csv))}: row 6, column '{column}'"
        r": .* leads outside the image root",
    ):
        metadata.from_official(image_csv, moa_csv, dataset[0], CHANNELS)


def test_every_row_remembers_its_row_in_the_users_table(dataset, tmp_path):
    image_csv, moa_csv = official(dataset, tmp_path)
    raw = pd.read_csv(image_csv)
    table = metadata.from_official(image_csv, moa_csv, dataset[0], CHANNELS)
    assert set(table[metadata.SOURCE_TABLE]) == {str(image_csv)}
    for _, row in table.iterrows():  # brute force: the CSV row holds this row's files
        source = raw.loc[row[metadata.SOURCE_ROW]]
        for ch in CHANNELS:
            assert row[path_column(ch)].endswith(
                os.sep + source[f"Image_PathName_{ch}"] + os.sep + source[f"Image_FileName_{ch}"]
            )


def test_validation_names_the_users_row_and_column_not_the_prepared_tables(dataset, tmp_path):
    from tiff_factory import SHAPE

    from workflow_scripts.data import validate

    def edit(raw):
        raw.iloc[:] = raw.iloc[::-1].to_numpy()  # the user's row order is not the prepared one
        raw.loc[7, "Image_FileName_Tubulin"] = raw.loc[7, "Image_FileName_Tubulin"][:-6] + "00.tif"

    image_csv, moa_csv = official(dataset, tmp_path, edit=edit)
    prepared = tmp_path / "prepared.parquet"
    argv = [
        "--source",
        "official",
        "--image-table",
        str(image_csv),
        "--moa-table",
        str(moa_csv),
        "--image-root",
        str(dataset[0]),
        "--channels",
        *CHANNELS,
        "--out",
        str(prepared),
    ]
    assert metadata.main(argv) == 0
    assert pd.read_parquet(prepared)[metadata.SOURCE_ROW].tolist() != list(range(len(dataset[1])))
    with pytest.raises(InputError) as err:
        validate.validate(prepared, CHANNELS, SHAPE, workers=2)
    assert str(err.value).startswith(f"{image_csv}: row 7 (image_id "), str(err.value)
    assert "column 'Image_PathName_Tubulin, Image_FileName_Tubulin'" in str(err.value)
    assert "file not found" in str(err.value)
    # a valid table: the validated table has exactly the documented columns
    official(dataset, tmp_path)  # rewrite the unedited tables
    assert metadata.main(argv[:-1] + [str(tmp_path / "good.parquet")]) == 0
    table, _ = validate.validate(tmp_path / "good.parquet", CHANNELS, SHAPE, workers=2)
    assert list(table.columns) == METADATA_COLUMNS + [path_column(ch) for ch in CHANNELS]


# ------------------------------------------------------------------ issue 23, case 2
def respell_controls(column: pd.Series, spellings: list[str]) -> pd.Series:
    """The control rows of `column` spelled in turn as `spellings` (other rows unchanged)."""
    controls = column.index[column == "DMSO"]
    new = column.copy()
    for i, row in enumerate(controls):
        new[row] = spellings[i % len(spellings)]
    return new


def test_controls_spelled_in_any_case_are_controls_and_counted(dataset, tmp_path):
    # the join used to drop the `dmso` rows without a word (TVN fitted on half the controls)
    def edit(raw):
        raw["Image_Metadata_Compound"] = respell_controls(
            raw["Image_Metadata_Compound"], ["dmso", "DMSO", " Dmso"]
        )

    image_csv, moa_csv = official(dataset, tmp_path, edit=edit)
    table = metadata.from_official(image_csv, moa_csv, dataset[0], CHANNELS)
    pd.testing.assert_frame_equal(without_origin(table), dataset[1])
    raw = pd.read_csv(image_csv)
    respelled = raw.index[raw["Image_Metadata_Compound"].isin(["dmso", " Dmso"])]
    assert table.attrs[metadata.PREPARE_REPORT_ATTR]["control_spellings"] == [
        {
            "table": str(image_csv),
            "rows": len(respelled),
            "spellings": [" Dmso", "dmso"],
            "first_row": int(respelled[0]),
        }
    ]


def test_controls_spelled_dmso_everywhere_are_controls(dataset, tmp_path):
    def edit_moa(moa):
        moa["compound"] = respell_controls(moa["compound"], ["dmso"])

    def edit(raw):
        raw["Image_Metadata_Compound"] = respell_controls(raw["Image_Metadata_Compound"], ["dmso"])

    image_csv, moa_csv = official(dataset, tmp_path, edit=edit, edit_moa=edit_moa)
    table = metadata.from_official(image_csv, moa_csv, dataset[0], CHANNELS)
    pd.testing.assert_frame_equal(without_origin(table), dataset[1])
    (tmp_path / "seed").mkdir()
    annotated, dmso = seed_tables(dataset[1], tmp_path / "seed")
    for path in (annotated, dmso):
        seed = pd.read_csv(path, index_col=0)
        seed["Image_Metadata_Compound"] = respell_controls(
            seed["Image_Metadata_Compound"], ["dmso"]
        )
        seed.to_csv(path)
    table = metadata.from_seed_csv(annotated, dmso, CHANNELS)
    pd.testing.assert_frame_equal(without_origin(table), dataset[1])
    spelled = table.attrs[metadata.PREPARE_REPORT_ATTR]["control_spellings"]
    assert [(s["table"], s["rows"]) for s in spelled] == [
        (str(dmso), int(dataset[1]["is_control"].sum()))
    ]


def test_every_row_the_join_leaves_out_is_counted_with_its_reason(dataset, tmp_path):
    def edit(raw):
        compound, concentration = (
            raw["Image_Metadata_Compound"],
            raw["Image_Metadata_Concentration"],
        )
        raw.loc[compound == "emetine", "Image_Metadata_Compound"] = "unknown"
        raw.loc[(compound == "taxol") & (concentration == 0.3), "Image_Metadata_Concentration"] = (
            0.31
        )
        raw.loc[(compound == "taxol") & (concentration == 1.0), "Image_Metadata_Compound"] = "TAXOL"

    image_csv, moa_csv = official(dataset, tmp_path, edit=edit)
    table = metadata.from_official(image_csv, moa_csv, dataset[0], CHANNELS)
    left_out = table.attrs[metadata.PREPARE_REPORT_ATTR]["rows_left_out"]
    # brute force: each treated row of the image table whose (compound, dose) the MoA table lacks
    raw, moa = pd.read_csv(image_csv), pd.read_csv(moa_csv)
    pairs = {(c, f"{x:g}") for c, x in zip(moa["compound"], moa["concentration"])}
    expected: dict[str, int] = {}
    for compound, concentration in zip(
        raw["Image_Metadata_Compound"], raw["Image_Metadata_Concentration"]
    ):
        if compound == "DMSO" or (compound, f"{concentration:g}") in pairs:
            continue
        if compound in set(moa["compound"]):
            reason = "concentration not in the MoA table for this compound"
        elif compound.lower() in set(moa["compound"].str.lower()):
            reason = "compound in the MoA table only in another case"
        else:
            reason = "compound not in the MoA table"
        expected[reason] = expected.get(reason, 0) + 1
    assert {d["reason"]: d["rows"] for d in left_out} == expected and len(expected) == 3
    assert sum(expected.values()) == len(raw) - len(table)
    assert all(d["table"] == str(image_csv) for d in left_out)
    other_case = next(d for d in left_out if "another case" in d["reason"])
    assert "TAXOL at 1 (MoA table: taxol)" == other_case["example"]


def test_the_shipped_tables_left_out_rows_add_up():
    table = metadata.from_official(
        OFFICIAL_TABLES / "BBBC021_v1_image.csv.gz",
        OFFICIAL_TABLES / "BBBC021_v1_moa.csv",
        "/data/bbbc021",
        CHANNELS,
    )
    raw = pd.read_csv(OFFICIAL_TABLES / "BBBC021_v1_image.csv.gz")
    left_out = table.attrs[metadata.PREPARE_REPORT_ATTR]["rows_left_out"]
    assert sum(d["rows"] for d in left_out) == len(raw) - len(table) > 0


def test_validation_report_lists_the_rows_prepare_left_out(dataset, tmp_path):
    from workflow_scripts.data import validate

    def edit(raw):
        raw.loc[raw["Image_Metadata_Compound"] == "emetine", "Image_Metadata_Compound"] = "unknown"
        raw["Image_Metadata_Compound"] = respell_controls(raw["Image_Metadata_Compound"], ["dmso"])

    image_csv, moa_csv = official(dataset, tmp_path, edit=edit)
    prepared, out = tmp_path / "prepared.parquet", tmp_path / "out"
    argv = ["--source", "official", "--image-table", str(image_csv), "--moa-table", str(moa_csv)]
    argv += ["--image-root", str(dataset[0]), "--channels", *CHANNELS, "--out", str(prepared)]
    assert metadata.main(argv) == 0
    out.mkdir()
    argv = ["--table", str(prepared), "--channels", *CHANNELS, "--image-shape", "24", "32"]
    argv += ["--out", str(out / "images.parquet"), "--report", str(out / "report.json")]
    argv += ["--report-md", str(out / "report.md")]
    assert validate.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    prepared_report = pd.read_parquet(prepared).attrs[metadata.PREPARE_REPORT_ATTR]
    assert report["rows_left_out"] == prepared_report["rows_left_out"]
    assert report["control_spellings"] == prepared_report["control_spellings"]
    assert [d["reason"] for d in report["rows_left_out"]] == ["compound not in the MoA table"]
    assert report["n_control_images"] == int(dataset[1]["is_control"].sum())
    markdown = (out / "report.md").read_text()
    assert f"| {image_csv} | compound not in the MoA table | 6 |" in markdown
    assert "spell the compound 'dmso'" in markdown


def test_no_control_left_names_the_users_table_not_the_prepared_one(dataset, tmp_path):
    from workflow_scripts.data import validate

    def edit(raw):
        raw["Image_Metadata_Compound"] = respell_controls(raw["Image_Metadata_Compound"], ["DMS0"])

    def edit_moa(moa):
        moa["compound"] = respell_controls(moa["compound"], ["DMS0"])

    image_csv, moa_csv = official(dataset, tmp_path, edit=edit, edit_moa=edit_moa)
    prepared = tmp_path / "prepared.parquet"
    metadata.from_official(image_csv, moa_csv, dataset[0], CHANNELS).to_parquet(prepared)
    with pytest.raises(InputError) as err:
        validate.validate(prepared, CHANNELS, (24, 32))
    assert str(err.value).startswith(f"{image_csv}: no DMSO control image")
    assert "column 'Image_Metadata_Compound'" in str(err.value)
