"""Bad and random input to the dataset builder (``load_mirror_dataset``): every bad study is refused with a
one-line ``UserInputError`` naming the study and the file; ``skip_bad=True`` keeps the good studies and
lists every bad one; no other exception escapes."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest_fuzz import (  # noqa: F401 - fuzz_report reports the counts at the end of the session
    FUZZ,
    SHAPE,
    UNREADABLE,
    fuzz_report,
    nifti_bytes,
    small_volume,
    tried,
    user_error_or_result,
    with_sform,
)
from hypothesis import given
from hypothesis import strategies as st

from mirror_unet_hf.data import load_mirror_dataset
from mirror_unet_hf.data.builder import StudyFiles, read_study
from mirror_unet_hf.errors import UserInputError

STUDY = "01-01-2020-NA-PET-CT-1"
NAME_MAX = os.pathconf("/", "PC_NAME_MAX")
FAR = np.diag([2.0, 2.0, 3.0, 1.0])
FAR[:3, 3] = 10000.0


def label(values) -> bytes:
    data = np.zeros(SHAPE, np.float32 if isinstance(values, float) else np.int16)
    data[2:5, 2:5, 2:5] = values
    return nifti_bytes(data)


# file of the study to replace -> {case: (bytes, fragment)}
BAD_STUDIES = {
    **{f"SUV: {case}": ("SUV.nii.gz", data, fragment) for case, (data, fragment) in UNREADABLE.items()},
    "CTres: NaN voxels": ("CTres.nii.gz", nifti_bytes(np.full(SHAPE, np.nan, np.float32)), "NaN/Inf"),
    "CTres: 4D": ("CTres.nii.gz", nifti_bytes(np.zeros((*SHAPE, 2), np.float32)), "expected a 3D volume"),
    "CTres: 10 m away": ("CTres.nii.gz", with_sform(small_volume(SHAPE), FAR), "does not overlap"),
    "SEG: label 7": ("SEG.nii.gz", label(7), "expected 0..1"),
    "SEG: negative": ("SEG.nii.gz", label(-1), "expected 0..1"),
    "SEG: fractional": ("SEG.nii.gz", label(0.5), "non-integer"),
    "SEG: NaN": ("SEG.nii.gz", label(float("nan")), "NaN/Inf"),
    "SEG: another shape": ("SEG.nii.gz", nifti_bytes(np.zeros((12, 10, 7), np.uint8)), "disagrees"),
    "SEG: 2D": ("SEG.nii.gz", nifti_bytes(np.zeros(SHAPE[:2], np.uint8)), "expected a 3D volume"),
}


def write_study(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    suv = small_volume(SHAPE, seed)
    (folder / "CTres.nii.gz").write_bytes(nifti_bytes(suv * 40 - 100))
    (folder / "SUV.nii.gz").write_bytes(nifti_bytes(suv))
    (folder / "SEG.nii.gz").write_bytes(nifti_bytes((suv > 8).astype(np.uint8)))
    return folder


def load(root: Path, tmp_path: Path, **kwargs):
    return load_mirror_dataset("autopet", root, num_folds=2, cache_dir=tmp_path / "cache", **kwargs)


def case_ids(data) -> list[str]:
    return sorted([*data["train"]["case_id"], *data["validation"]["case_id"]])


def test_skip_bad_keeps_the_good_studies_and_lists_every_bad_one(tmp_path):
    root = tmp_path / "FDG-PET-CT-Lesions"
    good_patients = ["PETCT_good 1", "PETCT_good ünï 2"]
    for i, patient in enumerate(good_patients):
        write_study(root / patient / STUDY, seed=i)
    bad = {}
    for i, case in enumerate(sorted(BAD_STUDIES)):
        filename, data, fragment = BAD_STUDIES[case]
        patient = f"PETCT_bad{i:02d}"
        (write_study(root / patient / STUDY, seed=i) / filename).write_bytes(data)
        bad[f"{patient}/{STUDY}"] = (filename, fragment)
    tried("load_mirror_dataset", len(good_patients) + len(bad))

    with pytest.raises(UserInputError) as caught:  # strict: the first bad study, named with its file
        load(root, tmp_path)
    assert f"PETCT_bad00/{STUDY}" in str(caught.value) and "\n" not in str(caught.value)

    with pytest.warns(UserWarning) as record:
        data = load(root, tmp_path, skip_bad=True)
    assert case_ids(data) == sorted(f"{p}_{STUDY}" for p in good_patients)
    listed = [line.strip() for w in record for line in str(w.message).splitlines()]
    assert f"skipped {len(bad)} of {len(bad) + 2} studies (skip_bad=True):" in listed
    for name, (filename, fragment) in bad.items():
        line = next(item for item in listed if f"study {name!r}" in item)
        assert filename in line and fragment in line, line


def test_study_and_patient_names_with_spaces_unicode_dots_and_long_names_load(tmp_path):
    root = tmp_path / "FDG-PET-CT-Lesions"
    patients = ["PETCT a b", "PETCT_ünïcødé_病灶", "PETCT..dots", "P" * NAME_MAX]
    for i, patient in enumerate(patients):
        write_study(root / patient / STUDY, seed=i)
    write_study(root / "..hidden" / STUDY, seed=9)  # hidden folders (.DS_Store, ._*) are not studies
    tried("load_mirror_dataset", len(patients) + 1)
    assert case_ids(load(root, tmp_path)) == sorted(f"{p}_{STUDY}" for p in patients)


BRAIN_SHAPE = (8, 10, 6)


@pytest.mark.parametrize(
    "image, fragment",
    [
        (np.zeros(BRAIN_SHAPE, np.float32), "4D channel-last"),
        (np.zeros((*BRAIN_SHAPE, 3), np.float32), "4D channel-last"),
        (np.zeros((*BRAIN_SHAPE, 4, 2), np.float32), "4D channel-last"),
        (np.full((*BRAIN_SHAPE, 4), np.nan, np.float32), "NaN/Inf"),
        (np.zeros((*BRAIN_SHAPE, 4), np.complex64), "complex"),
    ],
    ids=["3D", "3 channels", "5D", "NaN", "complex"],
)
def test_brain_tumour_image_of_the_wrong_kind_is_skipped_and_listed(tmp_path, image, fragment):
    root = tmp_path / "Task01_BrainTumour"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for case in ("BRATS_001", "BRATS_002", "BRATS_003"):
        data = image if case == "BRATS_002" else small_volume((*BRAIN_SHAPE, 4))
        (root / "imagesTr" / f"{case}.nii.gz").write_bytes(nifti_bytes(data))
        (root / "labelsTr" / f"{case}.nii.gz").write_bytes(nifti_bytes(np.zeros(BRAIN_SHAPE, np.uint8)))
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"training": training}))
    tried("load_mirror_dataset", 3)
    with pytest.warns(UserWarning, match=f"study 'BRATS_002', file 'imagesTr/BRATS_002.nii.gz'.*{fragment}"):
        data = load_mirror_dataset("brain_tumour", root, num_folds=2, cache_dir=tmp_path / "cache", skip_bad=True)
    assert case_ids(data) == ["BRATS_001", "BRATS_003"]


@pytest.fixture(scope="module")
def study_folder(tmp_path_factory) -> Path:
    return write_study(tmp_path_factory.mktemp("builder") / "PETCT_x" / STUDY, seed=3)


@FUZZ
@given(
    role=st.sampled_from(["ct", "pet", "label"]),
    gz=st.booleans(),
    edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.none() | st.floats(0, 1),
)
def test_a_randomly_corrupted_study_file_is_read_or_refused_by_the_builder(
    tmp_path_factory, study_folder, role, gz, edits, cut
):
    folder = tmp_path_factory.mktemp("study")
    for path in study_folder.iterdir():
        shutil.copy(path, folder / path.name)
    name = {"ct": "CTres.nii.gz", "pet": "SUV.nii.gz", "label": "SEG.nii.gz"}[role]
    data = bytearray(study_folder.joinpath(name).read_bytes())
    if not gz:  # the builder keeps the name; the content decides (gzip magic or not)
        data = bytearray(gzip.decompress(bytes(data)))
    for where, value in edits:
        data[min(int(where * len(data)), len(data) - 1)] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    (folder / name).write_bytes(bytes(data))
    files = {"ct": folder / "CTres.nii.gz", "pet": folder / "SUV.nii.gz", "label": folder / "SEG.nii.gz"}
    study = StudyFiles("PETCT_x_study", "PETCT_x", "PETCT_x/study", files=files, diagnosis="unknown")
    record = user_error_or_result("dataset builder read_study (byte corruption)", read_study, "autopet", study)
    if not isinstance(record, UserInputError):
        assert record["shape"] == list(SHAPE)
