"""Every bad input raises UserInputError naming the study and the file; skip_bad reports all failures."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mirror_unet_hf.data import load_mirror_dataset
from mirror_unet_hf.errors import UserInputError

AFFINE = np.diag([-4.0, 4.0, 4.0, 1.0])
STUDY = "01-01-2020-NA-PET-CT-1"


def _save(array, path: Path, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def _autopet(root: Path, patients=("PETCT_a", "PETCT_b", "PETCT_c")) -> Path:
    """A tiny valid AutoPET folder: one 8x8x8 study per patient."""
    rng = np.random.default_rng(0)
    for patient in patients:
        folder = root / "FDG-PET-CT-Lesions" / patient / STUDY
        seg = np.zeros((8, 8, 8), np.uint8)
        seg[3:5, 3:5, 3:5] = 1
        _save((rng.random((8, 8, 8)) * 100 - 50).astype(np.float32), folder / "CTres.nii.gz")
        _save((rng.random((8, 8, 8)) * 3 + seg * 5).astype(np.float32), folder / "SUV.nii.gz")
        _save(seg, folder / "SEG.nii.gz")
    return root


def _study(root: Path, patient="PETCT_b") -> Path:
    return root / "FDG-PET-CT-Lesions" / patient / STUDY


def _load(root: Path, tmp_path: Path, **kwargs):
    return load_mirror_dataset("autopet", root, num_folds=2, cache_dir=tmp_path / "cache", **kwargs)


def _expect(root, tmp_path, *fragments):
    with pytest.raises(UserInputError) as caught:
        _load(root, tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_valid_tiny_layout_loads(tmp_path):
    data = _load(_autopet(tmp_path / "raw"), tmp_path)
    assert len(data["train"]) + len(data["validation"]) == 3


def test_missing_modality_file(tmp_path):
    root = _autopet(tmp_path / "raw")
    (_study(root) / "SUV.nii.gz").unlink()
    _expect(root, tmp_path, "PETCT_b/" + STUDY, "SUV.nii.gz", "not found")


def test_truncated_file(tmp_path):
    root = _autopet(tmp_path / "raw")
    path = _study(root) / "CTres.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    _expect(root, tmp_path, "PETCT_b/" + STUDY, "CTres.nii.gz", "not a readable NIfTI")


def test_truncated_data_block_of_an_uncompressed_file(tmp_path):
    root = _autopet(tmp_path / "raw")
    path = _study(root) / "CTres.nii.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) - 500]))
    _expect(root, tmp_path, "PETCT_b/" + STUDY, "CTres.nii.gz")


def test_file_that_is_not_nifti(tmp_path):
    root = _autopet(tmp_path / "raw")
    (_study(root) / "SEG.nii.gz").write_text("patient,lesion\nb,1\n")
    _expect(root, tmp_path, "PETCT_b/" + STUDY, "SEG.nii.gz", "not a readable NIfTI")


def test_label_grid_disagrees_with_the_image(tmp_path):
    root = _autopet(tmp_path / "raw")
    _save(np.zeros((8, 8, 6), np.uint8), _study(root) / "SEG.nii.gz")
    _expect(root, tmp_path, "PETCT_b/" + STUDY, "SEG.nii.gz", "disagrees")


def test_label_shifted_in_world_space(tmp_path):
    root = _autopet(tmp_path / "raw")
    shifted = AFFINE.copy()
    shifted[0, 3] += 10.0
    _save(np.zeros((8, 8, 8), np.uint8), _study(root) / "SEG.nii.gz", shifted)
    _expect(root, tmp_path, "SEG.nii.gz", "disagrees")


def test_4d_file_where_3d_is_expected(tmp_path):
    root = _autopet(tmp_path / "raw")
    _save(np.zeros((8, 8, 8, 2), np.float32), _study(root) / "SUV.nii.gz")
    _expect(root, tmp_path, "PETCT_b/" + STUDY, "SUV.nii.gz", "4D", "expected a 3D volume")


def test_nan_voxels(tmp_path):
    root = _autopet(tmp_path / "raw")
    data = np.ones((8, 8, 8), np.float32)
    data[2, 2, 2] = np.nan
    _save(data, _study(root) / "CTres.nii.gz")
    _expect(root, tmp_path, "PETCT_b/" + STUDY, "CTres.nii.gz", "NaN")


def test_label_with_values_outside_the_classes(tmp_path):
    root = _autopet(tmp_path / "raw")
    _save(np.full((8, 8, 8), 3, np.uint8), _study(root) / "SEG.nii.gz")
    _expect(root, tmp_path, "SEG.nii.gz", "expected 0..1")


def test_empty_data_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    _expect(tmp_path / "empty", tmp_path, "holds no AutoPET studies")
    (tmp_path / "empty" / "FDG-PET-CT-Lesions").mkdir()
    _expect(tmp_path / "empty", tmp_path, "no studies found")


def test_missing_data_dir(tmp_path):
    _expect(tmp_path / "nowhere", tmp_path, "does not exist")


def test_dataset_json_naming_missing_files(brain_phantoms, tmp_path):
    root = tmp_path / "msd"
    shutil.copytree(brain_phantoms / "Task01_BrainTumour", root)
    manifest = json.loads((root / "dataset.json").read_text())
    manifest["training"].append({"image": "./imagesTr/BRATS_404.nii.gz", "label": "./labelsTr/BRATS_404.nii.gz"})
    (root / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(UserInputError, match=r"study 'BRATS_404', file 'imagesTr/BRATS_404.nii.gz': file not found"):
        load_mirror_dataset("brain_tumour", root, num_folds=2, cache_dir=tmp_path / "cache")


def test_brain_tumour_image_that_is_3d(brain_phantoms, tmp_path):
    root = tmp_path / "msd"
    shutil.copytree(brain_phantoms / "Task01_BrainTumour", root)
    _save(np.ones((32, 40, 32), np.float32), root / "imagesTr" / "BRATS_002.nii.gz")
    with pytest.raises(UserInputError, match=r"study 'BRATS_002', file 'imagesTr/BRATS_002.nii.gz'.*4D channel-last"):
        load_mirror_dataset("brain_tumour", root, num_folds=2, cache_dir=tmp_path / "cache")


def test_dataset_json_with_another_channel_order(brain_phantoms, tmp_path):
    root = tmp_path / "msd"
    shutil.copytree(brain_phantoms / "Task01_BrainTumour", root)
    manifest = json.loads((root / "dataset.json").read_text())
    manifest["modality"] = {"0": "T1w", "1": "FLAIR", "2": "t1gd", "3": "T2w"}
    (root / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(UserInputError, match="channel order"):
        load_mirror_dataset("brain_tumour", root, num_folds=2, cache_dir=tmp_path / "cache")


def test_skip_bad_skips_and_reports_every_failed_study(tmp_path):
    root = _autopet(tmp_path / "raw", patients=[f"PETCT_{i}" for i in range(6)])
    (_study(root, "PETCT_1") / "SUV.nii.gz").unlink()
    (_study(root, "PETCT_4") / "SEG.nii.gz").write_bytes(b"garbage")
    with pytest.warns(UserWarning) as record:
        data = _load(root, tmp_path, skip_bad=True)
    message = "\n".join(str(w.message) for w in record)
    assert "skipped 2 of 6 studies" in message
    assert "PETCT_1/" + STUDY in message and "SUV.nii.gz" in message
    assert "PETCT_4/" + STUDY in message and "SEG.nii.gz" in message
    kept = sorted(list(data["train"]["patient_id"]) + list(data["validation"]["patient_id"]))
    assert kept == ["PETCT_0", "PETCT_2", "PETCT_3", "PETCT_5"]
    with pytest.warns(UserWarning, match="skipped 2 of 6"):  # the cached build still reports them
        _load(root, tmp_path, skip_bad=True)
    with pytest.raises(UserInputError, match="PETCT_1"):  # without skip_bad the same folder fails
        _load(root, tmp_path)
