"""Shared readers of the stage boundary files: one clear error naming the file."""

import pytest

from workflow_scripts.errors import InputError
from workflow_scripts.tables import read_json


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
