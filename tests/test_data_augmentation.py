"""Augmentation of training patches (`--augment`): geometry, determinism under (seed, epoch, study, patch), the
label set, and independence from global random state and from the number of DataLoader workers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mirror_unet_hf.data import MirrorPatchDataset, PreprocessingConfig, extract_patch, load_mirror_dataset
from mirror_unet_hf.data.augmentation import (
    PatchAugmenter,
    SpatialDraw,
    apply_spatial,
    context_shape,
    draw_spatial,
    rotation_matrix,
)
from mirror_unet_hf.data.sampling import augmented_patches
from mirror_unet_hf.errors import UserInputError

AUTOPET = PreprocessingConfig.for_dataset("autopet")
NO_FLIPS = (False, False, False)


@pytest.fixture(scope="module")
def autopet_splits(autopet_phantoms, tmp_path_factory):
    return load_mirror_dataset(
        "autopet", autopet_phantoms, fold=0, num_folds=3, cache_dir=tmp_path_factory.mktemp("cache")
    )


def patches(splits, augmentation, epoch=0, seed=3, workers=0):
    dataset = MirrorPatchDataset(
        splits["train"], AUTOPET, 24, patches_per_volume=4, seed=seed, augmentation=augmentation
    )
    dataset.set_epoch(epoch)
    # a DataLoader draws its workers' base seed from the global torch RNG: iterate the dataset itself without workers
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers) if workers else dataset
    return [(item["case_id"], item["pixel_values"], item["labels"]) for item in loader]


def test_a_quarter_turn_is_the_patch_turned_a_quarter_with_its_centre_kept():
    """The resampling's geometry: rotating 90° about axis 0 gives the unaugmented patch turned in the (1, 2) plane,
    value for value (nearest and linear interpolation agree at whole-voxel positions)."""
    volume = np.arange(2 * 30 * 31 * 32, dtype=np.float32).reshape(2, 30, 31, 32)
    centre, size = (15, 14, 16), (12, 12, 12)
    draw = SpatialDraw(rotation_matrix([math.pi / 2, 0, 0]), NO_FLIPS)
    block = extract_patch(volume, centre, context_shape(size, draw))
    expected = np.rot90(extract_patch(volume, centre, size), -1, axes=(2, 3))
    np.testing.assert_allclose(apply_spatial(block, draw, size, "bilinear"), expected, atol=1e-2)
    np.testing.assert_array_equal(apply_spatial(block, draw, size, "nearest"), expected)


def test_a_rotated_and_scaled_patch_inside_the_volume_reads_no_padding():
    """The block cut around the centre covers the turned and stretched patch: inside a volume of ones the patch is
    all ones (a patch-sized cut would bring zeros into its corners)."""
    volume = np.ones((1, 80, 80, 80), np.float32)
    draw = SpatialDraw(rotation_matrix([0.5, -0.5, 0.5]) @ np.diag([1.4, 1.4, 0.7]), NO_FLIPS)
    block = extract_patch(volume, (40, 40, 40), context_shape((16, 16, 16), draw))
    assert apply_spatial(block, draw, (16, 16, 16), "bilinear").min() > 0.999
    assert apply_spatial(volume[:, 32:48, 32:48, 32:48], draw, (16, 16, 16), "bilinear").min() < 0.5


def test_draws_follow_the_official_probabilities():
    rng = np.random.default_rng(0)
    draws = [draw_spatial(rng) for _ in range(4000)]
    resampled = np.mean([d.matrix is not None for d in draws])
    assert abs(resampled - (1 - 0.8 * 0.8)) < 0.03  # rotation p 0.2, scaling p 0.2, independent
    assert abs(np.mean([d.flips for d in draws]) - 0.5) < 0.03


@pytest.mark.parametrize("augmentation", ["spatial", "spatial+intensity"])
def test_same_seed_same_patches_other_epoch_other_patches_labels_stay_labels(autopet_splits, augmentation):
    first, again = patches(autopet_splits, augmentation), patches(autopet_splits, augmentation)
    assert all(
        a[0] == b[0] and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) for a, b in zip(first, again, strict=True)
    )
    later = patches(autopet_splits, augmentation, epoch=1)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, later, strict=True))
    plain = patches(autopet_splits, "none")
    assert (
        sum(not torch.equal(a[1], b[1]) for a, b in zip(first, plain, strict=True)) >= len(plain) // 2
    )  # flips alone: 7/8
    for _, image, label in first:
        assert image.shape == (2, 24, 24, 24) and image.dtype == torch.float32 and torch.isfinite(image).all()
        assert set(label.unique().tolist()) <= {0, 1} and label.dtype == torch.int64
    assert any(label.any() for _, _, label in first)  # lesions survive the resampling


def test_spatial_augmentation_keeps_the_intensity_range_and_changes_lesion_voxels_consistently(autopet_splits):
    for _, image, label in patches(autopet_splits, "spatial"):
        assert float(image.min()) >= 0 and float(image.max()) <= 1  # linear interpolation of [0, 1] values
        if label.any():  # lesions are bright in PET: the label moves with the image
            assert image[1][label == 1].mean() > image[1][label == 0].mean()


def test_patches_do_not_depend_on_workers_or_global_random_state(autopet_splits):
    torch.manual_seed(0)
    np.random.seed(0)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    alone = sorted(patches(autopet_splits, "spatial+intensity"), key=lambda p: (p[0], p[1].sum().item()))
    assert torch.equal(torch.get_rng_state(), torch_state) and np.array_equal(np.random.get_state()[1], numpy_state)
    torch.manual_seed(1)
    np.random.seed(1)
    two = sorted(patches(autopet_splits, "spatial+intensity", workers=2), key=lambda p: (p[0], p[1].sum().item()))
    assert [p[0] for p in alone] == [p[0] for p in two]
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) for a, b in zip(alone, two, strict=True))


def test_without_augmentation_the_patches_are_the_sampler_s_as_before(autopet_splits):
    """`augmentation="none"` draws what the sampler drew before augmentation existed; "spatial" keeps the centres
    (the same draws from the study's generator) and only transforms around them."""
    dataset = MirrorPatchDataset(autopet_splits["train"], AUTOPET, 24, patches_per_volume=4, seed=3)
    arrays = dataset.studies.training_arrays(0)
    from mirror_unet_hf.data import sample_patches

    images, _, _ = sample_patches(
        arrays["image"], arrays["label"], 24, 4, np.random.default_rng([3, 0, 0]), positives=arrays["positives"]
    )
    assert np.array_equal(dataset.study_patches(0)[0], images)
    identity = PatchAugmenter("spatial")
    identity.draw = lambda rng: (SpatialDraw(None, NO_FLIPS), 0)
    centres = np.array([[10, 10, 10], [3, 40, 5]])
    out, _ = augmented_patches(arrays["image"], arrays["label"], centres, (24, 24, 24), identity, [None, None])
    assert np.array_equal(out[1], extract_patch(arrays["image"], centres[1], (24, 24, 24)))


def test_unknown_augmentation_is_refused(autopet_splits):
    with pytest.raises(UserInputError, match="expected one of none, spatial, spatial\\+intensity"):
        MirrorPatchDataset(autopet_splits["train"], AUTOPET, 24, augmentation="rotate")
