"""Shared readers of the stage boundary files: one clear error naming the file."""

from pathlib import Path

import pandas as pd
import pytest

from workflow_scripts.errors import InputError
from workflow_scripts.tables import read_json

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "file not found"),
        ("{oops", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"label": "a/b/0001"}', r"missing key\(s\) nsc, nscb"),
    ],
)
def test_read_json_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "metrics.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=rf"metrics.json: {message}"):
        read_json(path, required=("label", "nsc", "nscb"))


def test_read_json_returns_the_object(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text('{"n_images": 3}')
    assert read_json(path, required=["n_images"]) == {"n_images": 3}


@pytest.mark.parametrize("delimiter, suffix", [(";", ".csv"), ("\t", ".csv.gz")])
def test_a_table_with_another_delimiter_is_named_so_not_as_missing_columns(
    tmp_path, delimiter, suffix
):
    """Issue 23, case 11: a `;`-separated image table listed all 11 columns as missing."""
    from workflow_scripts.data import metadata

    image_table = REPO / "data" / "bbbc021" / "BBBC021_v1_image.csv.gz"
    path = tmp_path / f"BBBC021_v1_image{suffix}"
    pd.read_csv(image_table).head(20).to_csv(path, sep=delimiter, decimal=",", index=False)
    moa_table = REPO / "data" / "bbbc021" / "BBBC021_v1_moa.csv"
    with pytest.raises(InputError) as err:
        metadata.from_official(path, moa_table, tmp_path, ["DAPI"])
    assert str(err.value) == (
        f"{path}: does not look comma-separated: its header line is separated by "
        f"{delimiter!r}; save it as CSV with commas (decimal points, not commas)"
    )
    # a comma-separated table without a column still names the column
    pd.read_csv(image_table).head(3).drop(columns=["Replicate"]).to_csv(tmp_path / "c.csv")
    with pytest.raises(InputError, match=r"c.csv: missing column\(s\) Replicate$"):
        metadata.from_official(tmp_path / "c.csv", moa_table, tmp_path, ["DAPI"])
