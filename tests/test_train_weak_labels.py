"""Weak-label multi-crop (train.weak_label, workflow_scripts/train/weak_labels.py): label-balanced
draws, local crops from an image of the same label, keyed draws, and `none` = the seed's DINO."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from scipy.stats import chisquare
from test_train_run import ARCH, TINY, demo_settings, stop_after_epoch_one

from workflow_scripts import config as cfg
from workflow_scripts.data.cache import write_arrays
from workflow_scripts.errors import InputError
from workflow_scripts.train import loop
from workflow_scripts.train.dataset import EpochIndexSampler, build_train_loader
from workflow_scripts.train.multicrop import MultiCrop
from workflow_scripts.train.weak_labels import WeakLabelSampler, label_codes

CLIP_MAX = 10000
VALUE_STEP = 100  # field i holds the constant (i + 1) * VALUE_STEP: a crop names its field
P_FLOOR = 1e-3  # a correct sampler fails a chi-square test at this level once in 1,000 runs

# 4 compounds of unequal sizes (1, 2, 4, 8 treated fields) + 3 DMSO fields
COMPOUNDS = ["a"] * 1 + ["b"] * 2 + ["c"] * 4 + ["d"] * 8 + ["DMSO"] * 3


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def labelled_cache(directory: Path, compounds: list[str] = COMPOUNDS, size: int = 48) -> Path:
    """A cache whose field i is the constant (i + 1) * VALUE_STEP in every channel."""
    n = len(compounds)
    control = np.array([c == "DMSO" for c in compounds])
    table = pd.DataFrame(
        {
            "image_id": [f"P1/A{i:02d}/s1" for i in range(n)],
            "plate": "P1",
            "well": [f"A{i:02d}" for i in range(n)],
            "site": 1,
            "replicate": 1,
            "batch": "Week1",
            "compound": compounds,
            "concentration": np.where(control, 0.0, 1.0),
            "treatment": [f"{c}@{0 if c == 'DMSO' else 1}" for c in compounds],
            # the moa of a control is empty, as in BBBC021's tables
            "moa": [None if c == "DMSO" else f"moa_{c in 'ab'}" for c in compounds],
            "is_control": control,
            **{f"path_{ch}": [f"/x/{i}_{ch}.tif" for i in range(n)] for ch in ("DAPI", "Actin")},
        }
    )
    values = ((np.arange(n) + 1) * VALUE_STEP).astype(np.uint16)
    field = np.broadcast_to(values[:, None, None], (n, size, size)).copy()
    write_arrays(
        directory, table, {"DAPI": field, "Actin": field}, clip_max=CLIP_MAX, settings_digest="t"
    )
    return directory


def field_of(crop: torch.Tensor) -> int:
    """The cache row a crop of labelled_cache was cut from (bicubic keeps a constant)."""
    values = crop.numpy() * CLIP_MAX / VALUE_STEP - 1
    row = int(round(float(values.mean())))
    assert np.allclose(values, row, atol=1e-3), "a crop mixes fields"
    return row


def test_labels_uniform_per_draw_and_images_uniform_within_a_label():
    sizes = np.array([1, 3, 10, 40])
    codes = np.repeat(np.arange(4), sizes)
    sampler = WeakLabelSampler(codes, num_replicas=1, rank=0, seed=7)
    images, partners = map(np.concatenate, zip(*(sampler.draws(e) for e in range(400))))
    assert len(images) == 400 * len(codes)

    labels = codes[images]
    counts = np.bincount(labels, minlength=4)
    assert chisquare(counts).pvalue > P_FLOOR  # uniform over labels
    # the test can tell: WeightedRandomSampler-free shuffling (proportional to size) is rejected
    assert chisquare(counts, sizes / sizes.sum() * counts.sum()).pvalue < 1e-12
    assert np.array_equal(codes[partners], labels)  # the partner shares the label
    for label in range(4):
        members = np.flatnonzero(codes == label)
        for drawn in (images, partners):
            chosen = drawn[labels == label]
            per_image = np.bincount(chosen, minlength=len(codes))[members]
            if len(members) > 1:
                assert chisquare(per_image).pvalue > P_FLOOR, (label, "not uniform")
            assert per_image.sum() == len(chosen)
    # partner and image independent within the label: the image itself is drawn 1 / size of
    # the time (label 3: 40 images)
    own = np.mean(partners[labels == 3] == images[labels == 3])
    assert abs(own - 1 / 40) < 0.01


def test_draws_keyed_on_seed_and_epoch_and_sharded_by_rank():
    codes = np.repeat(np.arange(5), [2, 3, 4, 5, 6])
    one = WeakLabelSampler(codes, num_replicas=1, rank=0, seed=3)
    again = WeakLabelSampler(codes, num_replicas=1, rank=0, seed=3)
    for epoch in (0, 5):
        one.set_epoch(epoch)
        again.set_epoch(epoch)
        assert list(one) == list(again)  # same seed, same draws
    one.set_epoch(0)
    other_seed = WeakLabelSampler(codes, num_replicas=1, rank=0, seed=4)
    assert list(one) != list(other_seed)
    epoch1 = WeakLabelSampler(codes, num_replicas=1, rank=0, seed=3)
    epoch1.set_epoch(1)
    assert [k[1:3] for k in one] != [k[1:3] for k in epoch1]

    ranks = [WeakLabelSampler(codes, num_replicas=2, rank=r, seed=3) for r in (0, 1)]
    items = [list(s) for s in ranks]
    assert len(items[0]) == len(items[1]) == len(codes) // 2
    assert [k[1:3] for k in items[0]] != [k[1:3] for k in items[1]]  # different draws per rank
    # rank r takes draws r, r + 2, ...: the two ranks together are the one process' epoch
    merged = sorted(items[0] + items[1], key=lambda k: k[3])
    assert merged == list(one)[: len(merged)]


def test_global_crops_from_the_drawn_image_local_crops_from_its_label(tmp_path):
    cache = labelled_cache(tmp_path / "cache")
    table = pd.read_parquet(cache / "images.parquet")
    settings = demo_settings(images="all", weak_label="compound", batch_size_per_gpu=3)
    loader, sampler = build_train_loader(
        str(cache), "DAPI", settings, rank=0, world_size=1, seed=0, device_type="cpu"
    )
    n_global = settings["global_crops"]["number"]
    own_partner = other_partner = 0
    for epoch in range(12):
        sampler.set_epoch(epoch)
        for key in sampler:
            _, index, partner, _ = key
            crops = loader.dataset[key]
            assert len(crops) == n_global + settings["local_crops"]["number"]
            assert {field_of(c) for c in crops[:n_global]} == {index}
            local = {field_of(c) for c in crops[n_global:]}
            assert local == {partner}
            assert table["compound"][partner] == table["compound"][index]  # DMSO with DMSO
            own_partner += partner == index
            other_partner += partner != index
    assert own_partner and other_partner
    # the loader batches exactly these items
    sampler.set_epoch(0)
    keys = list(sampler)[:3]
    batch = next(iter(loader))
    for position, crop in enumerate(batch):
        expected = torch.stack([loader.dataset[k][position] for k in keys])
        assert torch.equal(crop, expected)


def test_none_is_the_seed_sampler_and_crops_keyed_on_the_row(tmp_path):
    cache = labelled_cache(tmp_path / "cache")
    settings = demo_settings(images="all", batch_size_per_gpu=3)
    assert settings["weak_label"] == "none"  # config.yaml's default
    loader, sampler = build_train_loader(
        str(cache), "DAPI", settings, rank=0, world_size=1, seed=5, device_type="cpu"
    )
    assert type(sampler) is EpochIndexSampler
    sampler.set_epoch(2)
    transform = MultiCrop.from_settings(settings, clip_max=CLIP_MAX)
    field = np.load(cache / "DAPI.npy", mmap_mode="r")
    for epoch, index in list(sampler)[:4]:
        row = int(loader.dataset.rows[index])
        expected = transform([field[row]], np.random.default_rng((5, epoch, row)))
        got = loader.dataset[(epoch, index)]
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
        assert {field_of(c) for c in got} == {row}


def test_label_codes_dmso_own_label_and_missing_label_named(tmp_path):
    cache = labelled_cache(tmp_path / "cache")
    table = pd.read_parquet(cache / "images.parquet")
    rows = np.arange(len(table))
    for label in ("compound", "treatment", "moa"):
        codes = label_codes(table, rows, label, "images.parquet")
        control = table["is_control"].to_numpy()
        assert len(set(codes[control])) == 1  # DMSO: one label
        assert not set(codes[control]) & set(codes[~control])
        same = table[label].to_numpy()[:, None] == table[label].to_numpy()[None, :]
        treated = ~control
        assert np.array_equal(
            (codes[:, None] == codes[None, :])[np.ix_(treated, treated)],
            same[np.ix_(treated, treated)],
        )
    broken = table.copy()
    broken.loc[4, "moa"] = None
    with pytest.raises(InputError, match=r"images.parquet: row 4 \(image 'P1/A04/s1'\) has no moa"):
        label_codes(broken, rows, "moa", "images.parquet")
    with pytest.raises(InputError, match="train.weak_label"):
        label_codes(table, rows, "plate", "images.parquet")


def weak_job(tmp_path: Path, cache: Path, name: str, **overrides) -> loop.TrainJob:
    settings = demo_settings(
        images="all", weak_label="compound", batch_size_per_gpu=3, epochs=2, checkpoint_every=1
    )
    return loop.TrainJob(
        arch=ARCH,
        channel="DAPI",
        cache_dir=cache,
        weights="none",
        model_kwargs=TINY,
        settings=cfg.deep_merge(settings, overrides),
        out_dir=tmp_path / name / "train",
        resume_dir=tmp_path / name / "resume",
    )


def test_weak_label_run_resumed_mid_way_equals_the_uninterrupted_one(tmp_path, monkeypatch):
    cache = labelled_cache(tmp_path / "cache")
    reference = weak_job(tmp_path, cache, "reference")
    loop.run(reference)
    job = replace(
        reference, out_dir=tmp_path / "killed" / "train", resume_dir=tmp_path / "killed" / "resume"
    )
    with monkeypatch.context() as patch:
        stop_after_epoch_one(patch)
        with pytest.raises(KeyboardInterrupt):
            loop.run(job)
    loop.run(job)
    for epoch in (1, 2):
        expected = load_file(reference.out_dir / f"epoch_{epoch:04d}.safetensors")
        resumed = load_file(job.out_dir / f"epoch_{epoch:04d}.safetensors")
        assert all(torch.equal(expected[k], resumed[k]) for k in expected), epoch
    meta = (job.out_dir / "epoch_0002.json").read_text()
    assert '"weak_label": "compound"' in meta  # the checkpoint records the setting
    # and the label changes what is trained: weak_label none gives other weights
    plain = replace(
        reference,
        settings={**reference.settings, "weak_label": "none"},
        out_dir=tmp_path / "plain" / "train",
        resume_dir=tmp_path / "plain" / "resume",
    )
    assert plain.config_digest() != reference.config_digest()
    loop.run(plain)
    weights = load_file(plain.out_dir / "epoch_0002.safetensors")
    weak = load_file(reference.out_dir / "epoch_0002.safetensors")
    assert any(not torch.equal(weights[k], weak[k]) for k in weak)
