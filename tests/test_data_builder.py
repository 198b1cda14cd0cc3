"""The datasets builder: both layouts, embedded bytes, caching, real samples, and patient-grouped folds."""

from __future__ import annotations

import os
import shutil
from collections import Counter

import nibabel as nib
import numpy as np
import pytest

import mirror_unet_hf.data.builder as builder_module
from mirror_unet_hf.data import (
    BRAIN_TUMOUR_MODALITIES,
    DIAGNOSIS_NAMES,
    assign_folds,
    load_mirror_dataset,
    split_indices,
)
from mirror_unet_hf.errors import UserInputError


def _all_rows(dataset_dict):
    return [row for split in ("train", "validation") for row in dataset_dict[split]]


def test_autopet_phantoms_load_with_every_column(autopet_phantoms, tmp_path):
    data = load_mirror_dataset("autopet", autopet_phantoms, fold=0, num_folds=3, cache_dir=tmp_path)
    assert set(data) == {"train", "validation"}
    assert data["train"].column_names == [
        "case_id",
        "patient_id",
        "diagnosis",
        "ct",
        "pet",
        "label",
        "spacing",
        "shape",
    ]
    rows = _all_rows(data)
    assert len(rows) == 6
    for row in rows:
        folder = (
            autopet_phantoms / "FDG-PET-CT-Lesions" / row["patient_id"] / row["case_id"][len(row["patient_id"]) + 1 :]
        )
        original = nib.load(str(folder / "SUV.nii.gz"))
        assert np.array_equal(np.asanyarray(row["pet"].dataobj), np.asanyarray(original.dataobj))
        assert np.allclose(row["pet"].affine, original.affine)
        assert row["ct"].shape == row["label"].shape == tuple(row["shape"]) == (48, 48, 40)
        assert row["spacing"] == pytest.approx([2.0, 2.0, 3.0])
        assert row["diagnosis"] in DIAGNOSIS_NAMES
        assert (row["diagnosis"] == "negative") == (np.asanyarray(row["label"].dataobj).max() == 0)


def test_brain_tumour_4d_image_is_split_into_named_channels(brain_phantoms, tmp_path):
    data = load_mirror_dataset("brain_tumour", brain_phantoms, fold=0, num_folds=3, cache_dir=tmp_path)
    assert data["train"].column_names == [
        "case_id",
        "patient_id",
        *BRAIN_TUMOUR_MODALITIES,
        "label",
        "spacing",
        "shape",
    ]
    for row in _all_rows(data):
        original = nib.load(str(brain_phantoms / "Task01_BrainTumour" / "imagesTr" / f"{row['case_id']}.nii.gz"))
        for channel, modality in enumerate(BRAIN_TUMOUR_MODALITIES):
            assert row[modality].shape == (32, 40, 32)
            assert np.array_equal(np.asanyarray(row[modality].dataobj), np.asanyarray(original.dataobj)[..., channel])
            assert np.allclose(row[modality].affine, original.affine)
        assert row["spacing"] == pytest.approx([2.0, 2.0, 2.0])


def test_data_dir_may_be_the_dataset_folder_or_its_parent(brain_phantoms, tmp_path):
    parent = load_mirror_dataset("brain_tumour", brain_phantoms, num_folds=3, cache_dir=tmp_path)
    folder = load_mirror_dataset("brain_tumour", brain_phantoms / "Task01_BrainTumour", num_folds=3, cache_dir=tmp_path)
    assert parent["validation"]["case_id"] == folder["validation"]["case_id"]


def test_second_call_reads_no_nifti_and_bytes_survive_the_raw_folder(autopet_phantoms, tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    shutil.copytree(autopet_phantoms, raw)
    reads = Counter()
    original = builder_module.read_study

    def counting(name, study):
        reads[study.case_id] += 1
        return original(name, study)

    monkeypatch.setattr(builder_module, "read_study", counting)
    load_mirror_dataset("autopet", raw, fold=1, num_folds=3, cache_dir=tmp_path / "cache")
    assert sum(reads.values()) == 6
    data = load_mirror_dataset("autopet", raw, fold=2, num_folds=3, cache_dir=tmp_path / "cache")
    assert sum(reads.values()) == 6, "the second call (another fold) must come from the cache"
    shutil.rmtree(raw)
    for row in _all_rows(data):
        assert np.asanyarray(row["ct"].dataobj).shape == (48, 48, 40)
        assert np.asanyarray(row["label"].dataobj).dtype == np.uint8


def test_changed_raw_files_rebuild_the_cache(autopet_phantoms, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(autopet_phantoms, raw)
    (raw / "Clinical Metadata FDG PET_CT Lesions.csv").unlink()
    first = load_mirror_dataset("autopet", raw, num_folds=3, cache_dir=tmp_path / "cache")
    assert {row["diagnosis"] for row in _all_rows(first)} == {"unknown"}, "works without the metadata CSV"
    shutil.copy(autopet_phantoms / "Clinical Metadata FDG PET_CT Lesions.csv", raw)
    second = load_mirror_dataset("autopet", raw, num_folds=3, cache_dir=tmp_path / "cache")
    assert "unknown" not in {row["diagnosis"] for row in _all_rows(second)}


def test_real_autopet_sample_loads(shared_data, tmp_path):
    data = load_mirror_dataset("autopet", shared_data / "autopet_layout", fold=0, num_folds=2, cache_dir=tmp_path)
    rows = _all_rows(data)
    assert sorted(r["patient_id"] for r in rows) == ["PETCT_sts002", "PETCT_sts003"]
    assert len(data["train"]) == len(data["validation"]) == 1
    for row in rows:
        assert row["spacing"] == pytest.approx([5.46875, 5.46875, 3.27], abs=1e-4)
        assert row["diagnosis"] == "unknown"
        assert np.asanyarray(row["label"].dataobj).sum() > 0


def test_real_msd_sample_loads(shared_data, tmp_path):
    with pytest.warns(UserWarning, match="empty"):
        data = load_mirror_dataset(
            "brain_tumour", shared_data / "msd_task01_sample", fold=0, num_folds=2, cache_dir=tmp_path
        )
    (row,) = _all_rows(data)
    original = np.asanyarray(nib.load(str(shared_data / "msd_task01_sample/imagesTr/BRATS_sample.nii.gz")).dataobj)
    assert row["case_id"] == "BRATS_sample"
    assert np.array_equal(np.asanyarray(row["t1gd"].dataobj), original[..., 2])
    assert row["shape"] == [72, 88, 72]


# ------------------------------------------------------------------------------------------------ folds


def _cohort():
    """60 patients, a third of them with two studies, diagnoses as in AutoPET (half negative)."""
    patients, diagnoses = [], []
    names = ["negative", "lymphoma", "negative", "melanoma", "negative", "lung_cancer"]
    for p in range(60):
        for _ in range(2 if p % 3 == 1 else 1):
            patients.append(f"PETCT_{p:04x}")
            diagnoses.append(names[p % 6])
    return patients, diagnoses


def test_folds_keep_each_patient_on_one_side_and_cover_every_study():
    patients, diagnoses = _cohort()
    seen = []
    for fold in range(5):
        train, validation = split_indices(patients, diagnoses, fold, 5)
        assert not {patients[i] for i in train} & {patients[i] for i in validation}
        assert sorted(train + validation) == list(range(len(patients)))
        seen += validation
    assert sorted(seen) == list(range(len(patients))), "each study is validated exactly once"


def test_folds_are_deterministic_and_independent_of_input_order():
    patients, diagnoses = _cohort()
    folds = assign_folds(patients, diagnoses, 5)
    assert folds == assign_folds(patients, diagnoses, 5)
    order = np.random.default_rng(0).permutation(len(patients))
    shuffled = assign_folds([patients[i] for i in order], [diagnoses[i] for i in order], 5)
    assert [shuffled[list(order).index(i)] for i in range(len(patients))] == folds


def test_autopet_fold_assignment_is_pinned():
    # computed before the splits were generalised to any stratum (autoPET III's tracers): must not change
    expected = "43311334400031114001011433313222311340012444200321104330222002224441222002231443"
    patients, diagnoses = _cohort()
    assert "".join(map(str, assign_folds(patients, diagnoses, 5))) == expected
    assert "".join(map(str, assign_folds(patients, diagnoses, 5, order=DIAGNOSIS_NAMES))) == expected


def test_folds_are_stratified_by_diagnosis():
    patients, diagnoses = _cohort()
    folds = assign_folds(patients, diagnoses, 5)
    for diagnosis in set(diagnoses):
        counts = Counter(f for f, d in zip(folds, diagnoses) if d == diagnosis)
        assert len(counts) == 5 and max(counts.values()) - min(counts.values()) <= 2, (diagnosis, counts)
    sizes = Counter(folds).values()
    assert max(sizes) - min(sizes) <= 2


@pytest.mark.parametrize("fold, num_folds", [(5, 5), (-1, 5), (0, 1), (True, 5), (0.5, 5)])
def test_fold_out_of_range_is_a_user_error(autopet_phantoms, tmp_path, fold, num_folds):
    with pytest.raises(UserInputError, match="fold"):
        load_mirror_dataset("autopet", autopet_phantoms, fold=fold, num_folds=num_folds, cache_dir=tmp_path)


def test_unknown_dataset_name_is_a_user_error(autopet_phantoms, tmp_path):
    with pytest.raises(UserInputError, match="unknown dataset 'brats'"):
        load_mirror_dataset("brats", autopet_phantoms, cache_dir=tmp_path)


def test_phantom_split_groups_the_two_study_patient(autopet_phantoms, tmp_path):
    data = load_mirror_dataset("autopet", autopet_phantoms, fold=0, num_folds=2, cache_dir=tmp_path)
    train, validation = set(data["train"]["patient_id"]), set(data["validation"]["patient_id"])
    assert not train & validation
    counts = Counter(list(data["train"]["patient_id"]) + list(data["validation"]["patient_id"]))
    assert max(counts.values()) == 2
    assert os.listdir(tmp_path)  # the cache went where it was told
