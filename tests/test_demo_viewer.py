"""The demo viewer's pixels, without a UI: orientation, aspect, windows, overlays, MIPs, lesion rows, bad files."""

import gzip
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from mirror_unet_hf import viewer
from mirror_unet_hf.errors import UserInputError
from mirror_unet_hf.lesions import lesion_table

SHAPE = (20, 24, 16)
SPACING = (2.0, 2.0, 3.0)


def las_affine(spacing=SPACING, origin=(100.0, -50.0, -300.0)) -> np.ndarray:
    """AutoPET's layout: the first array axis runs towards the patient's left."""
    affine = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])
    affine[:3, 3] = origin
    return affine


def nifti(data, affine=None) -> nib.Nifti1Image:
    return nib.Nifti1Image(np.asarray(data), las_affine() if affine is None else affine)


# A marker near the patient's right (small i in LAS), anterior (large j) and head (large k).
MARKER = (2, SHAPE[1] - 3, SHAPE[2] - 3)


def marker_study(**kwargs) -> viewer.ViewerStudy:
    pet = np.zeros(SHAPE, dtype=np.float32)
    pet[MARKER] = 10.0
    ct = np.full(SHAPE, 40.0, dtype=np.float32)
    return viewer.load_study({"ct": nifti(ct), "pet": nifti(pet)}, "pet", **kwargs)


def marker_pixel(image2d: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(image2d)
    assert len(rows) == 1
    return int(rows[0]), int(cols[0])


# ------------------------------------------------------------------------------------------ orientation


def test_axial_slice_shows_patient_right_on_the_left_and_anterior_at_the_top():
    study = marker_study()
    z = study.display_index(nib.affines.apply_affine(las_affine(), MARKER))[2]
    cut = viewer.take_slice(study.images["pet"].data, "axial", z)
    row, col = marker_pixel(cut)
    assert col < cut.shape[1] // 4  # patient's right → image left (radiological)
    assert row < cut.shape[0] // 4  # anterior → top


def test_coronal_and_sagittal_slices_are_head_up_with_right_and_face_on_the_left():
    study = marker_study()
    x, y, _ = study.display_index(nib.affines.apply_affine(las_affine(), MARKER))
    coronal = viewer.take_slice(study.images["pet"].data, "coronal", y)
    row, col = marker_pixel(coronal)
    assert row < coronal.shape[0] // 4 and col < coronal.shape[1] // 4  # head up, right on the left
    sagittal = viewer.take_slice(study.images["pet"].data, "sagittal", x)
    row, col = marker_pixel(sagittal)
    assert row < sagittal.shape[0] // 4 and col < sagittal.shape[1] // 4  # head up, face on the left


def test_each_image_edge_names_the_patient_direction():
    study = marker_study()
    plain = viewer.Display("pet", crosshair=False)
    for plane, letters in (("axial", "RLAP"), ("coronal", "RLSI"), ("sagittal", "APSI")):
        image = np.asarray(viewer.render_slice(study, plane, study.centre(), plain))
        height, width = image.shape[:2]
        # each letter is white text with a black outline, at the middle of its edge; the body of the
        # phantom is empty, so anything dark there is a letter's outline
        for region in (
            image[height // 2 - 20 : height // 2 + 20, :30],
            image[height // 2 - 20 : height // 2 + 20, -30:],
            image[:30, width // 2 - 20 : width // 2 + 20],
            image[-30:, width // 2 - 20 : width // 2 + 20],
        ):
            assert (region.max(axis=-1) < 60).any()
        assert viewer.EDGE_LETTERS[plane] == tuple(letters)


def test_display_grid_is_ras_whatever_the_file_orientation():
    study = marker_study()
    assert nib.aff2axcodes(study.affine) == ("R", "A", "S")
    world = nib.affines.apply_affine(las_affine(), MARKER)
    np.testing.assert_allclose(nib.affines.apply_affine(study.affine, study.display_index(world)), world)


def test_image_size_follows_the_voxel_spacing_with_one_scale_for_all_views():
    study = marker_study()
    extents_mm = [n * s for n, s in zip(SHAPE, SPACING)]  # 40, 48, 48 mm
    scale = viewer.DISPLAY_PX / max(extents_mm)
    assert viewer.image_size(study, "axial") == (round(40 * scale), round(48 * scale))
    assert viewer.image_size(study, "coronal") == (round(40 * scale), round(48 * scale))
    assert viewer.image_size(study, "sagittal") == (round(48 * scale), round(48 * scale))
    width, height = viewer.render_slice(study, "coronal", study.centre(), viewer.Display("pet")).size
    assert (width, height) == viewer.image_size(study, "coronal")


# ------------------------------------------------------------------------------------------- windows


@pytest.mark.parametrize("name, width, level", [("Soft tissue", 400, 40), ("Lung", 1500, -600), ("Bone", 2000, 300)])
def test_ct_window_presets_map_level_to_mid_grey_and_the_edges_to_black_and_white(name, width, level):
    hu = np.array([level - width / 2 - 10, level - width / 2, level, level + width / 2, level + width / 2 + 10])
    np.testing.assert_allclose(viewer.ct_grey(hu, name), [0.0, 0.0, 0.5, 1.0, 1.0])


def test_pet_is_inverted_grey_up_to_the_chosen_suv():
    pet = np.zeros(SHAPE, dtype=np.float32)
    pet[5:15, 6:18, :] = 10.0  # a block large enough that its centre is not blurred by the upscaling
    study = viewer.load_study({"pet": nifti(pet)}, "pet")
    for suv_max, expected in ((20.0, 127.5), (5.0, 0)):  # SUV 10 is mid grey with 0-20, black with 0-5
        image = np.asarray(
            viewer.render_slice(study, "axial", study.centre(), viewer.Display("pet", suv_max=suv_max, crosshair=False))
        )
        height, width = image.shape[:2]
        assert int(image[height // 2, width // 2, 0]) == pytest.approx(expected, abs=1)
        assert int(image[height // 10, width // 10, 0]) == 255  # background SUV 0 is white


# ------------------------------------------------------------------------------------------ overlays


def study_with_prediction(mask: np.ndarray, truth: np.ndarray | None = None) -> viewer.ViewerStudy:
    pet = np.ones(SHAPE, dtype=np.float32)
    study = viewer.load_study(
        {"pet": nifti(pet)}, "pet", label=None if truth is None else nifti(truth.astype(np.uint8))
    )

    prediction = SimpleNamespace(mask=nifti(mask.astype(np.uint8)), branches={})
    config = SimpleNamespace(
        final_label_values=[0, 1],
        final_class_names=["background", "lesion"],
        branches=[],
        bottleneck_decoder=None,
        label_names=["background", "lesion"],
    )
    viewer.add_prediction(study, prediction, config)
    return study


def overlay_pixels(image, colour) -> np.ndarray:
    return np.all(np.asarray(image) == np.array(colour, dtype=np.uint8), axis=-1)


def test_opaque_mask_overlay_covers_exactly_the_mask_voxels():
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[4:9, 10:14, 8] = 1  # a 5 x 4 voxel patch on one axial slice
    study = study_with_prediction(mask)
    z = study.display_index(nib.affines.apply_affine(las_affine(), (6, 12, 8)))[2]
    display = viewer.Display("pet", overlay=viewer.FINAL_MASK, opacity=1.0, crosshair=False)
    image = viewer.render_slice(study, "axial", (0, 0, z), display)
    covered = overlay_pixels(image, viewer.LABEL_COLOURS[1])
    width, height = image.size
    pixel_mm2 = (SHAPE[0] * SPACING[0] / width) * (SHAPE[1] * SPACING[1] / height)
    assert covered.sum() * pixel_mm2 == pytest.approx(20 * SPACING[0] * SPACING[1], rel=0.1)
    empty = viewer.render_slice(study, "axial", (0, 0, z - 1), display)
    assert not overlay_pixels(empty, viewer.LABEL_COLOURS[1]).any()


def test_zero_opacity_hides_the_overlay():
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[4:9, 10:14, 8] = 1
    study = study_with_prediction(mask)
    z = study.display_index(nib.affines.apply_affine(las_affine(), (6, 12, 8)))[2]
    plain = viewer.render_slice(
        study, "axial", (0, 0, z), viewer.Display("pet", overlay=viewer.NO_OVERLAY, crosshair=False)
    )
    hidden = viewer.render_slice(
        study, "axial", (0, 0, z), viewer.Display("pet", overlay=viewer.FINAL_MASK, opacity=0.0, crosshair=False)
    )
    assert np.array_equal(np.asarray(plain), np.asarray(hidden))


def test_mask_vs_ground_truth_colours_agreement_misses_and_extras():
    mask = np.zeros(SHAPE, dtype=np.uint8)
    truth = np.zeros(SHAPE, dtype=np.uint8)
    mask[2:8, 10:14, 8] = 1  # columns 2..5 extra, 6..7 shared
    truth[6:12, 10:14, 8] = 1  # columns 8..11 missed
    study = study_with_prediction(mask, truth)
    assert ("Final mask vs ground truth", viewer.COMPARE) in study.overlay_choices()
    z = study.display_index(nib.affines.apply_affine(las_affine(), (6, 12, 8)))[2]
    image = viewer.render_slice(
        study, "axial", (0, 0, z), viewer.Display("pet", overlay=viewer.COMPARE, opacity=1.0, crosshair=False)
    )
    counts = {code: overlay_pixels(image, colour).sum() for code, (colour, _) in viewer.COMPARE_CODES.items()}
    assert counts[1] == pytest.approx(2 * counts[3], rel=0.15)  # 4 extra columns vs 2 shared
    assert counts[2] == pytest.approx(2 * counts[3], rel=0.15)  # 4 missed columns vs 2 shared
    assert [text for _, text in viewer.legend(study, viewer.COMPARE)] == [
        text for _, text in viewer.COMPARE_CODES.values()
    ]


def test_mip_projects_the_hottest_voxel_and_the_mask_along_the_ray():
    study = marker_study()
    coronal_mip = viewer.project_max(study.images["pet"].data, "coronal")
    row, col = marker_pixel(coronal_mip)
    assert row < coronal_mip.shape[0] // 4 and col < coronal_mip.shape[1] // 4
    position = study.centre()  # a coronal slice that misses the marker: the MIP still shows it
    assert not viewer.take_slice(study.images["pet"].data, "coronal", position[1]).any()
    image = np.asarray(viewer.render_mip(study, "coronal", viewer.Display("pet", suv_max=10.0, crosshair=False)))
    assert image.min() < 30  # SUV 10 at SUV range 0-10: (nearly, once upscaled) black


def test_mip_needs_a_pet():
    flair = nib.Nifti1Image(np.random.default_rng(0).random(SHAPE).astype(np.float32), np.eye(4))
    study = viewer.load_study({"flair": flair}, "flair")
    with pytest.raises(UserInputError, match="needs a PET"):
        viewer.render_mip(study, "coronal", viewer.Display("flair"))


def test_mri_channels_are_windowed_by_their_own_percentiles():
    values = np.random.default_rng(0).normal(100.0, 10.0, SHAPE).astype(np.float32)
    study = viewer.load_study({"t1gd": nib.Nifti1Image(values, np.eye(4))}, "t1gd")
    low, high = study.images["t1gd"].window
    assert low == pytest.approx(np.percentile(values, 0.5)) and high == pytest.approx(np.percentile(values, 99.5))
    assert [key for _, key in study.image_choices()] == ["t1gd"]  # no PET/CT fusion for MRI


# ---------------------------------------------------------------------------------------- bad files


def test_a_file_that_is_not_nifti_is_named_in_the_error():
    with pytest.raises(UserInputError, match=r"file 'notes.nii.gz': not a readable NIfTI file"):
        viewer.load_study({"pet": gzip.compress(b"hello")}, "pet", file_names={"pet": "notes.nii.gz"})


@pytest.mark.parametrize("shape", [(20, 24), (20, 24, 1)], ids=["2d", "one-slice"])
def test_a_2d_image_is_refused(shape):
    with pytest.raises(UserInputError, match=r"file 'slice.nii': .*2D.*expected a 3D volume"):
        viewer.load_study({"pet": nifti(np.zeros(shape, np.float32))}, "pet", file_names={"pet": "slice.nii"})


def test_a_ct_that_does_not_overlap_the_pet_is_refused():
    far = las_affine(origin=(5000.0, 0.0, 0.0))
    with pytest.raises(UserInputError, match=r"file 'CT.nii.gz' \(CT\) does not overlap the PET \(SUV\) image"):
        viewer.load_study(
            {"ct": nifti(np.zeros(SHAPE, np.float32), far), "pet": nifti(np.zeros(SHAPE, np.float32))},
            "pet",
            file_names={"ct": "CT.nii.gz"},
        )


def test_a_ground_truth_on_another_grid_is_refused():
    with pytest.raises(UserInputError, match="ground truth.*another grid"):
        viewer.load_study(
            {"pet": nifti(np.zeros(SHAPE, np.float32))}, "pet", label=nifti(np.zeros((10, 10, 10), np.uint8))
        )


def test_ground_truth_values_outside_the_label_names_are_refused():
    truth = np.zeros(SHAPE, np.uint8)
    truth[5, 5, 5] = 3
    with pytest.raises(UserInputError, match="label values span 0..3; expected 0..1"):
        viewer.load_study({"pet": nifti(np.zeros(SHAPE, np.float32))}, "pet", label=nifti(truth))


def test_a_ct_on_its_own_grid_is_resampled_onto_the_pet_grid():
    fine = las_affine(spacing=(1.0, 1.0, 1.5), origin=(100.5, -50.5, -300.75))  # same field of view, twice finer
    ct = np.zeros((40, 48, 32), np.float32)
    ct[4:8, 40:44, 24:28] = 500.0  # the fine voxels of PET voxel (2..3, 20..21, 12..13)
    pet = nifti(np.zeros(SHAPE, np.float32))
    study = viewer.load_study({"ct": nifti(ct, fine), "pet": pet}, "pet")
    assert study.images["ct"].data.shape == study.images["pet"].data.shape
    hot = study.display_index(nib.affines.apply_affine(las_affine(), (2.5, 20.5, 12.5)))
    assert study.images["ct"].data[hot] > 250.0
    assert study.sources["ct"].shape == (40, 48, 32)  # the model still reads the original CT


# ------------------------------------------------------------------------------------------- lesions


def test_lesion_rows_and_totals_come_from_the_lesion_table():
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[2:4, 2:4, 2:4] = 1
    mask[10:13, 10:13, 10:13] = 1
    suv = np.where(mask > 0, 5.0, 1.0).astype(np.float32)
    table = lesion_table(mask, suv, las_affine())
    columns, rows = viewer.lesion_rows(table, with_suv=True)
    assert columns == viewer.PET_LESION_COLUMNS
    assert [row[0] for row in rows] == [1, 2]
    assert rows[0][1] == pytest.approx(27 * 12 / 1000, abs=0.01)  # 27 voxels of 12 mm³
    assert rows[0][2:5] == [5.0, 5.0, pytest.approx(5.0 * 27 * 0.012, abs=0.01)]
    assert (
        viewer.lesion_summary(table, True)
        == f"2 lesions · MTV {table.total_mtv_ml:.2f} ml · TLG {table.total_tlg:.2f} · SUVmax 5.00"
    )
    columns, rows = viewer.lesion_rows(table, with_suv=False)
    assert columns == viewer.MRI_LESION_COLUMNS and len(rows[0]) == 3


def test_location_reads_right_anterior_superior_from_the_sign():
    assert viewer.location_text((12.4, -30.0, 140.2)) == "R 12, P 30, S 140"
    assert viewer.location_text((-5.0, 8.0, -20.0)) == "L 5, A 8, I 20"


def test_going_to_a_ring_shaped_lesion_lands_on_the_lesion_not_its_hole():
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[6:15, 6:15, 8] = 1
    mask[8:13, 8:13, 8] = 0  # the centroid falls in the hole
    study = study_with_prediction(mask)
    table = viewer.measure_lesions(study, nifti(mask))
    position = viewer.lesion_position(study, table.lesions[0])
    assert study.overlays[viewer.FINAL_MASK].data[position] == 1
