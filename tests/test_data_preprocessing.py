"""preprocess_study and its inverse: grids, RAS, spacing, intensities, round trips, and bad inputs."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from mirror_unet_hf.data import (
    PreprocessingConfig,
    foreground_box,
    preprocess_study,
    to_reference_grid,
)
from mirror_unet_hf.errors import UserInputError
from mirror_unet_hf.image_processing_mirror_unet import zoom as _zoom

AUTOPET = PreprocessingConfig.for_dataset("autopet")
RAW = PreprocessingConfig(("ct", "pet"), "pet", None, {})


def _world_centroid(mask, affine):
    return affine[:3, :3] @ np.argwhere(mask > 0).mean(0) + affine[:3, 3]


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.astype(bool).sum() + b.astype(bool).sum())


def _phantom_study(autopet_phantoms):
    study = next(
        s
        for s in sorted((autopet_phantoms / "FDG-PET-CT-Lesions").glob("*/*"))
        if s.is_dir() and np.asanyarray(nib.load(str(s / "SEG.nii.gz")).dataobj).any()
    )
    return {"ct": study / "CTres.nii.gz", "pet": study / "SUV.nii.gz"}, study / "SEG.nii.gz"


def test_output_is_ras_at_the_target_spacing_in_config_order(autopet_phantoms):
    images, label = _phantom_study(autopet_phantoms)
    config = PreprocessingConfig(("pet", "ct"), "pet", (1.5, 2.5, 2.0), {"ct": (-100, 250), "pet": (0, 15)})
    study = preprocess_study(images, config, label=label, case_id="x")
    assert study.image.dtype == np.float32 and study.label.dtype == np.int64
    assert study.image.shape[0] == 2 and study.image.shape[1:] == study.label.shape
    assert study.image.shape[1:] == (64, 38, 60)  # round(48 * 2 / 1.5), round(48 * 2 / 2.5), round(40 * 3 / 2)
    assert nib.aff2axcodes(study.affine) == ("R", "A", "S")
    assert study.spacing == pytest.approx((1.5, 2.5, 2.0))
    assert study.image.min() >= 0 and study.image.max() <= 1
    suv = np.asanyarray(nib.load(str(images["pet"])).dataobj)
    assert study.image[0].max() == pytest.approx(min(suv.max(), 15) / 15, rel=0.05), "channel 0 is the PET"


def test_label_round_trip_to_the_original_grid(autopet_phantoms):
    images, label_path = _phantom_study(autopet_phantoms)
    original = nib.load(str(label_path))
    seg = np.asanyarray(original.dataobj)
    config = PreprocessingConfig(("ct", "pet"), "pet", (1.3, 1.7, 2.2), {})
    study = preprocess_study(images, config, label=label_path)
    restored = study.restore(study.label, order=0)
    assert restored.shape == seg.shape and restored.dtype == np.int64
    assert np.linalg.norm(_world_centroid(restored, original.affine) - _world_centroid(seg, original.affine)) < 2.0
    assert np.linalg.norm(_world_centroid(study.label, study.affine) - _world_centroid(seg, original.affine)) < 2.0
    probabilities = to_reference_grid(np.stack([1.0 - study.label, study.label]).astype(np.float32), study, order=1)
    assert probabilities.shape == (2, *seg.shape) and probabilities.dtype == np.float32
    assert _dice(probabilities[1] > 0.5, seg) > 0.97
    assert np.array_equal(restored, seg), "a finer grid round-trips exactly"
    coarse = preprocess_study(images, PreprocessingConfig(("ct", "pet"), "pet", (3.0, 3.0, 4.0), {}), label=label_path)
    back = coarse.restore(coarse.label, order=0)
    assert _dice(back, seg) > 0.85  # measured 0.89: a coarser grid loses lesion edges
    assert np.linalg.norm(_world_centroid(back, original.affine) - _world_centroid(seg, original.affine)) < 2.0


def test_permuted_and_flipped_axes_come_back_exactly():
    affine = np.array([[0, 0, -2.5, 10], [0, -1.5, 0, 5], [3, 0, 0, -7], [0, 0, 0, 1.0]])
    label = np.zeros((20, 25, 18), np.uint8)
    label[5:9, 10:16, 4:8] = 1
    image = nib.Nifti1Image(np.random.default_rng(0).random(label.shape).astype(np.float32) + label, affine)
    config = PreprocessingConfig(("pet",), "pet", (1.5, 0.75, 1.25), {})
    study = preprocess_study({"pet": image}, config, label=nib.Nifti1Image(label, affine))
    assert nib.aff2axcodes(affine) == ("S", "P", "L") and nib.aff2axcodes(study.affine) == ("R", "A", "S")
    assert study.image.shape[1:] == (round(18 * 2.5 / 1.5), round(25 * 1.5 / 0.75), round(20 * 3 / 1.25))
    assert np.array_equal(study.restore(study.label, order=0), label)
    assert np.allclose(_world_centroid(study.label, study.affine), _world_centroid(label, affine), atol=0.8)


def test_axis_aligned_resampling_matches_scipy():
    data = np.random.default_rng(1).random((1, 21, 17, 13)).astype(np.float32)
    ratio = np.array([0.7, 1.3, 0.45])
    shape = (30, 13, 29)
    expected = ndimage.affine_transform(
        data[0], ratio, offset=0.5 * ratio - 0.5, output_shape=shape, order=1, mode="nearest"
    )
    assert np.allclose(_zoom(data, ratio, shape, order=1)[0], expected, atol=1e-5)


def test_native_ct_is_resampled_onto_the_pet_grid_in_place(shared_data):
    native = shared_data / "petct_native" / "STS_002"
    study = preprocess_study(
        {"ct": native / "CT.nii.gz", "pet": native / "SUV.nii.gz"}, RAW, label=native / "SEG.nii.gz"
    )
    pet = nib.load(str(native / "SUV.nii.gz"))
    assert study.reference_shape == pet.shape and np.allclose(study.reference_affine, pet.affine)
    assert study.image.shape[1:] == pet.shape, "no target spacing: the PET grid (reoriented) is kept"
    ct_on_pet = study.restore(study.image[:1], order=1)[0]
    sample = next((shared_data / "autopet_layout/FDG-PET-CT-Lesions/PETCT_sts002").glob("*"))
    ctres = np.asanyarray(nib.load(str(sample / "CTres.nii.gz")).dataobj)  # the same CT, put on the PET grid upstream
    # RAW z-scores the CT, a linear map: a correlation near 1 means every voxel landed where CTres has it
    assert np.corrcoef(ct_on_pet.ravel(), ctres.ravel())[0, 1] > 0.99


def test_lesion_stays_in_place_through_the_full_preprocessing(shared_data):
    native = shared_data / "petct_native" / "STS_002"
    seg = nib.load(str(native / "SEG.nii.gz"))
    study = preprocess_study(
        {"ct": native / "CT.nii.gz", "pet": native / "SUV.nii.gz"}, AUTOPET, label=native / "SEG.nii.gz"
    )
    assert study.spacing == pytest.approx((2.0, 2.0, 3.0))
    shift = np.linalg.norm(
        _world_centroid(study.label, study.affine) - _world_centroid(np.asanyarray(seg.dataobj), seg.affine)
    )
    assert shift < 5.47, f"lesion centroid moved {shift:.2f} mm (one PET voxel is 5.47 mm)"
    restored = study.restore(study.label, order=0)
    assert _dice(restored, np.asanyarray(seg.dataobj)) > 0.95


def test_intensity_window_and_nonzero_zscore():
    affine = np.eye(4)
    ct = np.array([-1000.0, -100.0, 75.0, 250.0, 3000.0] * 8, np.float32).reshape(5, 4, 2, order="F")
    mr = np.zeros((5, 4, 2), np.float32)
    mr[1:4, 1:3, :] = np.arange(12, dtype=np.float32).reshape(3, 2, 2) + 10
    config = PreprocessingConfig(("ct", "mr"), "ct", None, {"ct": (-100.0, 250.0)})
    study = preprocess_study({"ct": nib.Nifti1Image(ct, affine), "mr": nib.Nifti1Image(mr, affine)}, config)
    assert np.allclose(np.unique(study.image[0]), [0.0, 0.5, 1.0])
    inside = study.image[1][mr != 0]
    assert abs(inside.mean()) < 1e-5 and abs(inside.std() - 1) < 1e-4
    assert (study.image[1][mr == 0] == 0).all()


def test_foreground_box_is_the_nonzero_bounding_box():
    image = np.zeros((2, 10, 12, 14), np.float32)
    image[1, 2:5, 3:9, 4:6] = 1.0
    image[0, 0, 0, 0] = 5.0  # another channel's voxel is ignored when channels=[1]
    assert foreground_box(image, channels=[1]) == (slice(2, 5), slice(3, 9), slice(4, 6))
    assert foreground_box(image, channels=[1], margin=3) == (slice(0, 8), slice(0, 12), slice(1, 9))
    assert foreground_box(np.zeros((4, 4, 4))) == (slice(0, 4), slice(0, 4), slice(0, 4))


# ------------------------------------------------------------------------------------------ bad inputs


def _shifted(mm):
    affine = np.eye(4)
    affine[0, 3] = mm
    return affine


def _image(shape=(6, 6, 6), affine=None, value=1.0):
    return nib.Nifti1Image(np.full(shape, value, np.float32), np.eye(4) if affine is None else affine)


@pytest.mark.parametrize(
    "images, label, fragments",
    [
        ({"ct": _image()}, None, ["modality 'pet' is missing", "ct, pet"]),
        ({"ct": _image(), "pet": _image(), "mri": _image()}, None, ["unknown modality 'mri'", "accepted: ct, pet"]),
        ({"ct": _image(), "pet": _image((6, 6, 6, 3))}, None, ["pet image", "4D", "expected a 3D volume"]),
        ({"ct": _image((6, 6)), "pet": _image()}, None, ["ct image", "2D"]),
        ({"ct": _image(value=np.nan), "pet": _image()}, None, ["ct image", "NaN"]),
        ({"ct": _image(affine=_shifted(500.0)), "pet": _image()}, None, ["ct image", "does not overlap"]),
        ({"ct": _image(), "pet": _image()}, _image((6, 6, 5)), ["label grid", "disagrees"]),
    ],
)
def test_bad_study_inputs_raise_user_errors(images, label, fragments):
    with pytest.raises(UserInputError) as caught:
        preprocess_study(images, RAW, label=label, case_id="case-7")
    message = str(caught.value)
    assert "case-7" in message or "modality" in message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_file_is_named(tmp_path):
    with pytest.raises(UserInputError, match=r"study 'c1', file '.*SUV.nii.gz': file not found"):
        preprocess_study({"ct": _image(), "pet": tmp_path / "SUV.nii.gz"}, RAW, case_id="c1")


@pytest.mark.parametrize(
    "config, fragment",
    [
        (PreprocessingConfig(("ct", "pet"), "mr", None, {}), "reference_modality 'mr'"),
        (PreprocessingConfig(("ct", "pet"), "pet", (1.0, 0.0, 1.0), {}), "target_spacing"),
        (PreprocessingConfig(("ct", "pet"), "pet", None, {"ct": (250, -100)}), "high > low"),
        (PreprocessingConfig(("ct", "pet"), "pet", None, {"mr": (0, 1)}), "intensity_windows names 'mr'"),
    ],
)
def test_bad_config_is_a_user_error(config, fragment):
    with pytest.raises(UserInputError, match=fragment):
        preprocess_study({"ct": _image(), "pet": _image()}, config)


def test_the_model_presets_carry_the_official_preprocessing():
    from mirror_unet_hf import MirrorUNetConfig
    from mirror_unet_hf.data.preprocessing import preprocessing_settings

    assert preprocessing_settings(MirrorUNetConfig.from_preset("autopet-v1")) == preprocessing_settings(AUTOPET)
    assert preprocessing_settings(MirrorUNetConfig.from_preset("brats-v1")) == preprocessing_settings(
        PreprocessingConfig.for_dataset("brain_tumour")
    )


def test_windows_scale_without_clipping_when_asked_and_the_model_config_always_clips(autopet_phantoms):
    from mirror_unet_hf import MirrorUNetConfig

    images, _ = _phantom_study(autopet_phantoms)
    model_config = MirrorUNetConfig.from_preset("autopet-v1")
    unclipped = PreprocessingConfig.of(model_config, clip_intensities=False)
    assert unclipped.intensity_windows == {"ct": (-100.0, 250.0), "pet": (0.0, 15.0)} and not unclipped.clip_intensities
    clipped = preprocess_study(images, model_config)
    scaled = preprocess_study(images, unclipped)
    raw = preprocess_study(images, PreprocessingConfig.of(model_config, intensity_windows={}))  # z-scored, no window
    assert clipped.image.min() >= 0 and clipped.image.max() <= 1
    assert scaled.image[0].min() < 0, "air (-1000 HU) lies below the CT window"
    assert np.array_equal(np.clip(scaled.image, 0, 1), clipped.image)
    assert not np.array_equal(raw.image, scaled.image)
