"""The import graph that decides which rules an edited module reruns."""

import os

from workflow_scripts.code_deps import relative_module_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rel(module):
    return set(relative_module_files(module, start=REPO))


def test_extraction_runs_training_data_path_but_not_metrics():
    files = _rel("workflow_scripts.evaluate.extract")
    assert "workflow_scripts/evaluate/extract.py" in files
    assert "workflow_scripts/data/crops.py" in files  # imported: resizes crops as training does
    assert "workflow_scripts/model/checkpoint.py" in files
    assert "workflow_scripts/evaluate/__init__.py" in files  # package initialisers run too
    assert "workflow_scripts/evaluate/metrics.py" not in files
    assert not [f for f in files if f.startswith("workflow_scripts/train/")]  # nothing of training


def test_transitive_imports_are_followed():
    files = _rel("workflow_scripts.evaluate.evaluate")
    # evaluate -> pipeline -> metrics / tvn / aggregate
    assert {
        "workflow_scripts/evaluate/pipeline.py",
        "workflow_scripts/evaluate/metrics.py",
        "workflow_scripts/evaluate/tvn.py",
        "workflow_scripts/evaluate/aggregate.py",
    } <= files
    assert not any(f.startswith("workflow_scripts/train/") for f in files)


def test_paths_are_relative_to_the_working_directory(tmp_path):
    files = relative_module_files("workflow_scripts.data.cache", start=tmp_path)
    assert all(not os.path.isabs(f) for f in files)
    assert all(os.path.isfile(os.path.join(tmp_path, f)) for f in files)


def test_the_summary_reads_files_and_runs_no_training_or_evaluation_code():
    # an edit to training or evaluation code must not rerun the summary for nothing
    files = _rel("workflow_scripts.summary.cli")
    assert {
        "workflow_scripts/summary/runs.py",
        "workflow_scripts/summary/health.py",
        "workflow_scripts/summary/figures.py",
        "workflow_scripts/summary/html.py",
    } <= files
    assert not any(
        f.startswith(("workflow_scripts/train/", "workflow_scripts/evaluate/")) for f in files
    )
