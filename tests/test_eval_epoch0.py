"""Epoch 0 with random-init weights is the very network training starts from."""

import argparse

import torch

from workflow_scripts.evaluate.extract import load_model
from workflow_scripts.model.backbone import build_backbone
from workflow_scripts.model.rng import seed_everything

ARCH = "vit_small_patch16_dinov3.lvd1689m"
KWARGS = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def _epoch0(seed):
    args = argparse.Namespace(
        checkpoint=None,
        epoch=0,
        arch=ARCH,
        weights="none",
        init_seed=seed,
        input_standardization=None,
        interpolation=None,
    )
    return load_model(args, KWARGS)[0].state_dict()


def test_epoch0_random_init_matches_training_start_for_its_seed():
    seed_everything(7)  # what the trainer does before building its student
    training_start = build_backbone(ARCH, "none", KWARGS, drop_path_rate=0.1).state_dict()
    epoch0 = _epoch0(7)
    assert all(torch.equal(epoch0[k], training_start[k]) for k in training_start)
    other = _epoch0(8)
    assert not all(torch.equal(other[k], training_start[k]) for k in training_start)
