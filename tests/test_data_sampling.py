"""Patch sampling, the training dataset, and whole preprocessed studies for validation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import mirror_unet_hf.data.prepared as prepared_module
from mirror_unet_hf.data import (
    DIAGNOSIS_NAMES,
    MirrorPatchDataset,
    PreprocessingConfig,
    extract_patch,
    load_mirror_dataset,
    prepare_studies,
    sample_patch_centres,
    sample_patches,
)
from mirror_unet_hf.errors import UserInputError

AUTOPET = PreprocessingConfig.for_dataset("autopet")


@pytest.fixture(scope="module")
def autopet_splits(autopet_phantoms, tmp_path_factory):
    return load_mirror_dataset(
        "autopet", autopet_phantoms, fold=0, num_folds=3, cache_dir=tmp_path_factory.mktemp("cache")
    )


def _label():
    label = np.zeros((30, 30, 30), np.uint8)
    label[10:13, 20:22, 5:9] = 1
    return label


def test_centres_follow_the_two_to_one_ratio_and_land_on_foreground():
    label = _label()
    rng = np.random.default_rng(0)
    flags_all = []
    for _ in range(1000):
        centres, flags = sample_patch_centres(label, 4, rng)
        assert (label[tuple(centres[flags].T)] > 0).all()
        flags_all.append(flags)
    fraction = np.concatenate(flags_all).mean()
    assert abs(fraction - 2 / 3) < 0.02, fraction


def test_negative_centres_cover_the_volume_and_ratio_is_configurable():
    label = _label()
    centres, flags = sample_patch_centres(label, 3000, np.random.default_rng(1), pos_neg_ratio=(1, 3))
    assert abs(flags.mean() - 0.25) < 0.01
    negatives = centres[~flags]
    assert negatives.min() == 0 and negatives.max() == 29
    assert (label[tuple(negatives.T)] == 0).mean() > 0.99


def test_without_foreground_all_centres_are_negative():
    centres, flags = sample_patch_centres(np.zeros((8, 8, 8)), 12, np.random.default_rng(0))
    assert not flags.any() and centres.shape == (12, 3)


def test_sampling_is_deterministic_given_the_seed():
    image = np.random.default_rng(5).random((2, 30, 30, 30)).astype(np.float32)
    first = sample_patches(image, _label(), 16, 6, np.random.default_rng(42))
    again = sample_patches(image, _label(), 16, 6, np.random.default_rng(42))
    other = sample_patches(image, _label(), 16, 6, np.random.default_rng(43))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])
    assert first[0].shape == (6, 2, 16, 16, 16) and first[1].shape == (6, 16, 16, 16)


def test_patches_at_the_border_are_zero_padded():
    array = np.arange(2 * 5 * 6 * 7, dtype=np.float32).reshape(2, 5, 6, 7) + 1
    patch = extract_patch(array, (0, 5, 3), (4, 4, 4))
    assert patch.shape == (2, 4, 4, 4)
    assert (patch[:, :2] == 0).all(), "rows before index 0"
    assert (patch[:, :, 3] == 0).all(), "rows after the last index"
    assert np.array_equal(patch[:, 2:, :3, :], array[:, 0:2, 3:6, 1:5])
    assert (extract_patch(array[0], (40, 40, 40), (3, 3, 3)) == 0).all()


def test_patch_dataset_items_have_the_documented_shapes(autopet_splits):
    dataset = MirrorPatchDataset(autopet_splits["train"], AUTOPET, (32, 32, 16), patches_per_volume=3)
    items = list(dataset)
    assert len(items) == len(dataset) == 3 * len(autopet_splits["train"])
    for item in items:
        assert item["pixel_values"].shape == (2, 32, 32, 16) and item["pixel_values"].dtype == torch.float32
        assert item["labels"].shape == (32, 32, 16) and item["labels"].dtype == torch.int64
        assert item["class_labels"].shape == () and item["class_labels"].dtype == torch.int64
        assert float(item["pixel_values"].min()) >= 0 and float(item["pixel_values"].max()) <= 1
    diagnoses = dict(zip(autopet_splits["train"]["case_id"], autopet_splits["train"]["diagnosis"]))
    for item in items:
        assert DIAGNOSIS_NAMES[int(item["class_labels"])] == diagnoses[item["case_id"]]
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert batch["pixel_values"].shape == (4, 2, 32, 32, 16) and len(batch["case_id"]) == 4


def test_patch_dataset_is_deterministic_per_epoch(autopet_splits):
    dataset = MirrorPatchDataset(autopet_splits["train"], AUTOPET, 24, seed=3)
    first = [item["pixel_values"] for item in dataset]
    again = [item["pixel_values"] for item in dataset]
    dataset.set_epoch(1)
    later = [item["pixel_values"] for item in dataset]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, later))


def test_brain_tumour_patches_have_no_diagnosis(brain_phantoms, tmp_path):
    splits = load_mirror_dataset("brain_tumour", brain_phantoms, fold=0, num_folds=3, cache_dir=tmp_path)
    config = PreprocessingConfig(("flair", "t1gd"), "t1gd", None, {})
    item = next(iter(MirrorPatchDataset(splits["train"], config, 16)))
    assert int(item["class_labels"]) == -1 and item["pixel_values"].shape == (2, 16, 16, 16)
    assert set(torch.unique(item["labels"]).tolist()) <= {0, 1, 2, 3}


def test_studies_are_preprocessed_once_and_then_read_from_the_cache(autopet_splits, monkeypatch):
    calls = []
    original = prepared_module.preprocess_study
    monkeypatch.setattr(prepared_module, "preprocess_study", lambda *a, **k: calls.append(1) or original(*a, **k))
    config = PreprocessingConfig(("pet", "ct"), "pet", (3.0, 3.0, 3.0), {"pet": (0, 10)})
    first = prepare_studies(autopet_splits["validation"], config)
    assert len(calls) == len(autopet_splits["validation"])
    stamps = [os.stat(path).st_mtime_ns for path in first.files]
    (folder,) = {path.parent for path in first.files}
    assert folder.parent.parent == Path(autopet_splits["validation"].cache_files[0]["filename"]).parent
    second = prepare_studies(autopet_splits["validation"], config)
    assert len(calls) == len(autopet_splits["validation"]), "the second call must not preprocess again"
    assert second.files == first.files and [os.stat(path).st_mtime_ns for path in second.files] == stamps


def test_validation_studies_restore_onto_the_original_grid(autopet_splits, autopet_phantoms):
    studies = prepare_studies(autopet_splits["validation"], AUTOPET)
    assert len(studies) == len(autopet_splits["validation"])
    for row, study in zip(autopet_splits["validation"], studies):
        assert study.case_id == row["case_id"] and study.image.shape[0] == 2
        restored = study.restore(study.label, order=0)
        assert np.array_equal(restored, np.asanyarray(row["label"].dataobj))
        assert np.allclose(study.reference_affine, row["pet"].affine)


def test_bad_sampling_arguments(autopet_splits):
    with pytest.raises(UserInputError, match="patch_size"):
        MirrorPatchDataset(autopet_splits["train"], AUTOPET, (32, 32))
    with pytest.raises(UserInputError, match="pos_neg_ratio"):
        MirrorPatchDataset(autopet_splits["train"], AUTOPET, 32, pos_neg_ratio=(0, 0))
    with pytest.raises(UserInputError, match="no column for modality 'flair'"):
        MirrorPatchDataset(autopet_splits["train"], PreprocessingConfig(("flair",), "flair", None, {}), 32)


# ------------------------------------------------------------------ the official recipe's sampling


def _has_lesion(row) -> bool:
    return bool(np.asanyarray(row["label"].dataobj).any())


def test_positives_only_visits_lesion_positive_studies_and_counts_them(autopet_splits):
    split = autopet_splits["train"]
    positive = {row["case_id"] for row in split if _has_lesion(row)}
    assert 0 < len(positive) < len(split), "the fixture needs positive and negative studies"
    dataset = MirrorPatchDataset(split, AUTOPET, 16, patches_per_volume=3, positives_only=True)
    items = list(dataset)
    assert len(items) == len(dataset) == 3 * len(positive)
    assert {item["case_id"] for item in items} == positive
    everything = MirrorPatchDataset(split, AUTOPET, 16, patches_per_volume=3)
    assert len(list(everything)) == len(everything) == 3 * len(split)


def test_study_target_is_whether_the_label_has_foreground_not_the_diagnosis(autopet_splits):
    split = autopet_splits["train"]
    truth = {row["case_id"]: int(_has_lesion(row)) for row in split}
    items = list(MirrorPatchDataset(split, AUTOPET, 16, patches_per_volume=2, class_labels="lesion_presence"))
    assert {item["case_id"]: int(item["class_labels"]) for item in items} == truth
    assert set(truth.values()) == {0, 1}
    with pytest.raises(UserInputError, match="class_labels 'tracer'"):
        MirrorPatchDataset(split, AUTOPET, 16, class_labels="tracer")


def test_a_batch_of_patches_per_volume_patches_is_one_study_whatever_the_workers(autopet_splits):
    dataset = MirrorPatchDataset(autopet_splits["train"], AUTOPET, 16, patches_per_volume=3, seed=4)
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=workers, drop_last=True)
        batches = [batch["case_id"] for batch in loader]
        assert len(batches) == len(autopet_splits["train"])
        assert all(len(set(ids)) == 1 for ids in batches), batches
    straddling = torch.utils.data.DataLoader(dataset, batch_size=2)  # 3 patches per study, batches of 2
    assert any(len(set(batch["case_id"])) > 1 for batch in straddling)


def test_balanced_groups_draw_equally_many_studies_of_each_group_each_epoch(autopet_splits):
    split = autopet_splits["train"]
    groups = ["small"] + ["large"] * (len(split) - 1)
    dataset = MirrorPatchDataset(split, AUTOPET, 16, patches_per_volume=2, seed=1, groups=groups)
    group_of = dict(zip(split["case_id"], groups))
    per_group = -(-len(split) // 2)
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        items = list(dataset)
        assert len(items) == len(dataset) == 2 * 2 * per_group
        drawn = [group_of[item["case_id"]] for item in items]
        assert drawn.count("small") == drawn.count("large") == 2 * per_group
    small = [item["pixel_values"] for item in items if group_of[item["case_id"]] == "small"]
    assert not torch.equal(small[0], small[2]), "a second visit of a study draws other patches"
    again = [item["pixel_values"] for item in dataset]
    assert all(torch.equal(a, b["pixel_values"]) for a, b in zip(again, items))


def test_study_order_keeps_the_original_permutation_and_refuses_what_it_cannot_do():
    from mirror_unet_hf.data.study_order import StudyOrder

    order = StudyOrder(7).epoch(seed=3, epoch=2)
    assert [visit.study for visit in order] == list(np.random.default_rng([3, 2]).permutation(7))
    assert all(visit.repeat == 0 for visit in order)
    with pytest.raises(UserInputError, match="positives_only leaves no study to train on: none of the 3"):
        StudyOrder(3, [False, False, False], positives_only=True)
    with pytest.raises(UserInputError, match="two groups or more .* every study here is in group 'fdg'"):
        StudyOrder(3, groups=["fdg", "fdg", "fdg"])
    tracer = StudyOrder(5, [True, True, False, True, True], positives_only=True, groups=[None, "psma"] * 2 + ["x"])
    assert len(tracer) == 6 and "from the 4 lesion-positive of 5" in tracer.describe()


def test_training_patches_can_keep_intensities_outside_the_windows(autopet_splits):
    split = autopet_splits["train"]
    clipped = next(iter(MirrorPatchDataset(split, AUTOPET, 24, seed=2)))["pixel_values"]
    scaled = next(iter(MirrorPatchDataset(split, AUTOPET, 24, seed=2, clip_intensities=False)))["pixel_values"]
    assert float(clipped.min()) >= 0 and float(clipped.max()) <= 1
    assert float(scaled[0].min()) < 0, "CT below -100 HU (air) scales below 0 without clipping"
    inside = (scaled >= 0) & (scaled <= 1)
    assert torch.equal(scaled[inside], clipped[inside]), "values inside the windows are scaled the same"
