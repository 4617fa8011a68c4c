"""Backbone weights files and epoch checkpoints: round trips and clear errors (no network)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from hang_guard import HANG_GUARD_S
from safetensors.torch import load_file

from workflow_scripts.errors import InputError
from workflow_scripts.model import fetch_weights
from workflow_scripts.model.backbone import build_backbone
from workflow_scripts.model.checkpoint import (
    load_backbone_checkpoint,
    save_backbone_checkpoint,
    save_weights,
)
from workflow_scripts.train.resume_state import export_checkpoints, load_resume_state

REPO = Path(__file__).resolve().parents[1]
ARCH = "vit_small_patch16_dinov3.lvd1689m"
TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    a_state, b_state = a.state_dict(), b.state_dict()
    assert a_state.keys() == b_state.keys()
    for key in a_state:
        assert torch.equal(a_state[key], b_state[key]), key


def test_local_weights_file_round_trip(tmp_path):
    torch.manual_seed(1)
    source = build_backbone(ARCH, "none", TINY)
    path = tmp_path / "weights.safetensors"
    save_weights(source, path)
    loaded = build_backbone(ARCH, str(path), TINY, drop_path_rate=0.1)
    assert_same_weights(source, loaded)
    fresh = build_backbone(ARCH, "none", TINY)
    assert not torch.equal(fresh.cls_token, source.cls_token)  # a real load, not a coincidence


def test_fetch_weights_cli_saves_what_timm_returns(tmp_path, monkeypatch):
    torch.manual_seed(2)
    downloaded = timm.create_model(ARCH, pretrained=False, num_classes=0, **TINY)
    requested = {}

    def fake_hub_model(arch, weights, model_kwargs, drop_path_rate=0.0):
        requested.update(arch=arch, weights=weights)
        return downloaded

    monkeypatch.setattr(fetch_weights, "build_backbone", fake_hub_model)
    out = tmp_path / "weights" / f"{ARCH}.safetensors"
    assert fetch_weights.main(["--arch", ARCH, "--out", str(out)]) == 0
    assert requested == {"arch": ARCH, "weights": "hub"}
    assert_same_weights(downloaded, build_backbone(ARCH, str(out), TINY))
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left


def test_weights_file_errors_name_the_file(tmp_path):
    wrong = tmp_path / "wrong_arch.safetensors"
    save_weights(build_backbone(ARCH, "none", {"depth": 2, "embed_dim": 32, "num_heads": 2}), wrong)
    with pytest.raises(InputError, match=r"wrong_arch\.safetensors does not fit architecture"):
        build_backbone(ARCH, str(wrong), TINY)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file" * 8)
    with pytest.raises(InputError, match=r"corrupt\.safetensors cannot be read"):
        build_backbone(ARCH, str(corrupt), TINY)
    with pytest.raises(InputError, match=r"weights file not found: .*missing\.safetensors"):
        build_backbone(ARCH, str(tmp_path / "missing.safetensors"), TINY)


def test_unknown_architecture_and_model_kwargs():
    with pytest.raises(InputError, match="unknown timm architecture 'vit_nonexistent_patch16'"):
        build_backbone("vit_nonexistent_patch16", "none", {})
    with pytest.raises(InputError, match="invalid model_kwargs"):
        build_backbone(ARCH, "none", {"depht": 2})


def write_checkpoint(directory, epoch=3, arch=ARCH, model_kwargs=TINY):
    torch.manual_seed(epoch)
    backbone = build_backbone(arch, "none", model_kwargs)
    meta = {
        "arch": arch,
        "channel": "DAPI",
        "epoch": epoch,
        "config_digest": "abc",
        "model_kwargs": model_kwargs,
        "in_chans": 3,
        "train_settings": {},
    }
    return backbone, save_backbone_checkpoint(directory, backbone, meta)


def test_backbone_checkpoint_round_trip(tmp_path):
    backbone, path = write_checkpoint(tmp_path)
    assert path.name == "epoch_0003.safetensors"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["epoch"] == 3 and meta["in_chans"] == 3
    loaded, loaded_meta = load_backbone_checkpoint(path, expected_arch=ARCH)
    assert loaded_meta == meta
    assert not loaded.training
    assert_same_weights(backbone, loaded)
    assert load_file(path).keys() == backbone.state_dict().keys()  # timm names, nothing else


def test_backbone_checkpoint_errors(tmp_path):
    _, path = write_checkpoint(tmp_path)
    with pytest.raises(InputError, match=rf"checkpoint {path} is for arch {ARCH}, not vit_base"):
        load_backbone_checkpoint(path, expected_arch="vit_base_patch16_dinov3.lvd1689m")

    meta_file = path.with_suffix(".json")
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "model_kwargs": {**TINY, "embed_dim": 32}}))
    with pytest.raises(InputError, match="does not fit architecture"):
        load_backbone_checkpoint(path)
    meta_file.write_text(json.dumps(meta))

    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(InputError, match=r"epoch_0003\.safetensors cannot be read"):
        load_backbone_checkpoint(path)
    with pytest.raises(InputError, match="checkpoint file not found"):
        load_backbone_checkpoint(tmp_path / "epoch_0009.safetensors")


def test_corrupt_resume_state_is_a_clear_error(tmp_path):
    assert load_resume_state(tmp_path / "state.pt") is None
    state = tmp_path / "state.pt"
    torch.save({"epoch": 1, "weights": torch.ones(3)}, state)
    assert load_resume_state(state)["epoch"] == 1
    state.write_bytes(state.read_bytes()[:-40])
    with pytest.raises(InputError, match=r"resume state .*state\.pt cannot be read"):
        load_resume_state(state)


def test_export_links_every_checkpoint_and_is_repeatable(tmp_path):
    source, out = tmp_path / "epochs", tmp_path / "out"
    write_checkpoint(source, epoch=2)
    write_checkpoint(source, epoch=4)
    for _ in range(2):  # a second export (resume, finish) must not leave temp files
        exported = export_checkpoints(source, out)
    assert [p.name for p in exported] == ["epoch_0002.safetensors", "epoch_0004.safetensors"]
    assert sorted(p.name for p in out.iterdir()) == [
        "epoch_0002.json",
        "epoch_0002.safetensors",
        "epoch_0004.json",
        "epoch_0004.safetensors",
    ]
    assert os.path.samefile(source / "epoch_0004.safetensors", out / "epoch_0004.safetensors")


class _Payload:
    def __reduce__(self):  # what a crafted .pth would run when unpickled
        return (print, ("unpickled",))


def test_a_pickle_with_code_is_refused_as_such_not_as_a_misfit(tmp_path):
    crafted = tmp_path / "crafted.pth"
    torch.save({"cls_token": _Payload()}, crafted)
    with pytest.raises(InputError, match=r"crafted\.pth refused: it holds pickled Python objects"):
        build_backbone(ARCH, str(crafted), TINY)


def test_same_weights_and_metadata_give_identical_bytes(tmp_path):
    # safetensors orders __metadata__ by hash map, differently on each call (issue #11: a
    # resumed run's checkpoint differed from a clean run's); 8 keys: 40,320 possible orders
    torch.manual_seed(3)
    model = build_backbone(ARCH, "none", TINY)
    metadata = {f"key{i}": str(i) for i in range(8)}
    blobs = set()
    for i in range(5):
        save_weights(model, tmp_path / f"w{i}.safetensors", metadata=metadata)
        blobs.add((tmp_path / f"w{i}.safetensors").read_bytes())
    assert len(blobs) == 1
    from safetensors import safe_open

    with safe_open(tmp_path / "w0.safetensors", "pt") as fh:
        assert fh.metadata() == metadata
    assert_same_weights(model, build_backbone(ARCH, str(tmp_path / "w0.safetensors"), TINY))


def test_weights_path_of_a_folder_says_folder_not_missing(tmp_path):
    """Issue 23, case 12: the path exists, so "not found" misled."""
    with pytest.raises(InputError, match=r"weights .* is a folder, not a weights file"):
        build_backbone(ARCH, str(tmp_path), TINY)


def test_fetch_weights_without_the_hub_is_one_line_naming_arch_and_where_to_put_the_file(
    tmp_path,
):
    """Issue 23, case 9: three chained huggingface tracebacks before. An empty hub cache and
    HF_HUB_OFFLINE stand for a node without internet (the same LocalEntryNotFoundError)."""
    out = tmp_path / "weights" / f"{ARCH}.safetensors"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    command = ["-m", "workflow_scripts.model.fetch_weights", "--arch", ARCH, "--out", str(out)]
    result = subprocess.run(
        [sys.executable, *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=HANG_GUARD_S,
        cwd=REPO,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith(f"error: could not fetch the pretrained weights of {ARCH}")
    assert "hub is unreachable" in lines[-1] and str(out) in lines[-1]
    assert "weights: path/to/file.safetensors" in lines[-1]
    assert not out.exists()
