"""envs/*.yaml follow requirements.txt and the rules' real imports (one source of pins)."""

from __future__ import annotations

import shutil

import pytest

from workflow_scripts import environments as envs


def test_committed_env_files_match_requirements_and_imports():
    assert envs.drift() == []


def copy_envs(tmp_path):
    target = tmp_path / "envs"
    shutil.copytree(envs.REPO_DIR / "envs", target)
    return target


def test_a_drifted_pin_is_reported_with_both_versions(tmp_path):
    target = copy_envs(tmp_path)
    gpu = target / "pytorch-cuda.yaml"
    gpu.write_text(gpu.read_text().replace("torch==2.14.1", "torch==2.9.0"))
    (problem,) = envs.drift(envs_dir=target)
    assert "pytorch-cuda.yaml" in problem
    assert "-- torch==2.9.0" in problem and "+- torch==2.14.1" in problem


def test_a_package_no_rule_of_the_env_imports_is_reported(tmp_path):
    target = copy_envs(tmp_path)
    cpu = target / "workflow.yaml"
    cpu.write_text(cpu.read_text() + "      - albumentations==2.0.8\n")
    (problem,) = envs.drift(envs_dir=target)
    assert "workflow.yaml" in problem and "-- albumentations==2.0.8" in problem


def test_an_env_file_no_rule_uses_is_reported(tmp_path):
    target = copy_envs(tmp_path)
    (target / "old.yaml").write_text("dependencies: []\n")
    assert envs.drift(envs_dir=target) == [f"{target / 'old.yaml'}: no rule uses it"]


def test_cpu_rules_need_no_torch_and_gpu_rules_get_the_tested_torch():
    texts = envs.render_envs()
    pins = envs.read_pins(envs.REPO_DIR / "requirements.txt")
    assert "torch" not in {
        line.split("==")[0].strip("- ") for line in texts["workflow.yaml"].splitlines()
    }
    assert f"      - {pins['torch']}" in texts["pytorch-cuda.yaml"].splitlines()
    # timm imports torchvision at run time: its metadata pulls the pinned version in
    assert f"      - {pins['torchvision']}" in texts["pytorch-cuda.yaml"].splitlines()


def test_requirements_must_be_exact_pins(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy==2.4.6\n# a comment\ntorch>=2.4\n")
    with pytest.raises(ValueError, match=r"requirements.txt:3: not an exact pin"):
        envs.read_pins(requirements)
