"""Lesion table: per-lesion volume, SUV statistics, TLG, world centroid and box; CSV/JSON output."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mirror_unet_hf.errors import UserInputError
from mirror_unet_hf.lesions import lesion_table, write_lesion_table

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STUDY = SHARED_DATA / "autopet_layout" / "FDG-PET-CT-Lesions" / "PETCT_sts002" / "01-01-2000-NA-study"

# Voxel (i, j, k) -> world (-2 i + 0.5 k - 10, 3 j + 20, 4 k + 5) mm: x flipped, sheared, anisotropic, offset.
# |det| = 2 · 3 · 4 = 24 mm³ = 0.024 ml per voxel.
AFFINE = np.array([[-2.0, 0, 0.5, -10.0], [0, 3.0, 0, 20.0], [0, 0, 4.0, 5.0], [0, 0, 0, 1]])


@pytest.fixture
def two_lesions():
    mask = np.zeros((6, 5, 4), dtype=np.uint8)
    suv = np.full((6, 5, 4), 50.0, dtype=np.float32)  # bright background must not leak into lesions
    mask[1, 1, 1] = mask[2, 1, 1] = 1  # lesion A: SUV 4 and 6
    suv[1, 1, 1], suv[2, 1, 1] = 4.0, 6.0
    mask[4, 3, 0:3] = 1  # lesion B: SUV 1, 2, 3
    suv[4, 3, 0:3] = [1.0, 2.0, 3.0]
    return mask, suv


def test_lesions_are_measured_and_numbered_by_decreasing_volume(two_lesions):
    table = lesion_table(*two_lesions, AFFINE)
    big, small = table.lesions
    assert (big.lesion_id, big.voxel_count, small.lesion_id, small.voxel_count) == (1, 3, 2, 2)
    assert big.volume_ml == pytest.approx(0.072)
    assert (big.suv_max, big.suv_mean) == (3.0, pytest.approx(2.0))
    assert big.tlg == pytest.approx(0.144)
    assert small.volume_ml == pytest.approx(0.048)
    assert (small.suv_max, small.suv_mean) == (6.0, pytest.approx(5.0))
    assert small.tlg == pytest.approx(0.24)


def test_centroids_are_in_world_millimetres(two_lesions):
    big, small = lesion_table(*two_lesions, AFFINE).lesions
    assert big.centroid_mm == pytest.approx((-17.5, 29.0, 9.0))  # voxel (4, 3, 1)
    assert small.centroid_mm == pytest.approx((-12.5, 23.0, 9.0))  # voxel (1.5, 1, 1)


def test_bounding_boxes_are_inclusive_voxel_indices(two_lesions):
    big, small = lesion_table(*two_lesions, AFFINE).lesions
    assert (big.bbox_min, big.bbox_max) == ((4, 3, 0), (4, 3, 2))
    assert (small.bbox_min, small.bbox_max) == ((1, 1, 1), (2, 1, 1))


def test_study_summary_sums_volumes_and_glycolysis(two_lesions):
    summary = lesion_table(*two_lesions, AFFINE).summary()
    assert summary["lesion_count"] == 2
    assert summary["total_mtv_ml"] == pytest.approx(0.12)
    assert summary["total_tlg"] == pytest.approx(0.384)
    assert summary["suv_max"] == 6.0
    assert summary["voxel_volume_ml"] == pytest.approx(0.024)


def test_corner_touching_voxels_are_two_lesions_and_edge_touching_one():
    suv = np.ones((4, 4, 4))
    corner = np.zeros((4, 4, 4), dtype=bool)
    corner[1, 1, 1] = corner[2, 2, 2] = True
    edge = np.zeros((4, 4, 4), dtype=bool)
    edge[1, 1, 1] = edge[2, 2, 1] = True
    assert lesion_table(corner, suv, np.eye(4)).lesion_count == 2
    assert lesion_table(edge, suv, np.eye(4)).lesion_count == 1


def test_empty_mask_has_no_lesions():
    table = lesion_table(np.zeros((3, 3, 3)), np.ones((3, 3, 3)), np.eye(4))
    assert table.summary() == {
        "lesion_count": 0,
        "total_mtv_ml": 0.0,
        "total_tlg": 0.0,
        "suv_max": None,
        "voxel_volume_ml": 0.001,
    }


def test_mask_and_suv_on_different_grids_is_a_user_error():
    with pytest.raises(UserInputError, match="shape"):
        lesion_table(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)), np.eye(4))


def test_non_4x4_affine_is_a_user_error():
    with pytest.raises(UserInputError, match="affine"):
        lesion_table(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), np.eye(3))


def test_nan_suv_inside_a_lesion_is_a_user_error():
    mask, suv = np.zeros((3, 3, 3)), np.zeros((3, 3, 3))
    mask[1, 1, 1], suv[1, 1, 1] = 1, np.nan
    with pytest.raises(UserInputError, match="non-finite"):
        lesion_table(mask, suv, np.eye(4))


def test_written_csv_and_json_hold_the_table(tmp_path, two_lesions):
    table = lesion_table(*two_lesions, AFFINE)
    write_lesion_table(table, tmp_path / "lesions.csv", tmp_path / "lesions.json")
    with open(tmp_path / "lesions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["lesion_id"] for row in rows] == ["1", "2"]
    assert float(rows[1]["suv_mean"]) == pytest.approx(5.0)
    assert (rows[0]["bbox_min_k"], rows[0]["bbox_max_k"]) == ("0", "2")
    assert float(rows[1]["centroid_x_mm"]) == pytest.approx(-12.5)
    payload = json.loads((tmp_path / "lesions.json").read_text())
    assert payload["summary"]["lesion_count"] == 2
    assert payload["lesions"][0]["volume_ml"] == pytest.approx(0.072)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lesions.csv", "lesions.json"]  # no temp files left


def test_existing_output_is_kept_unless_overwrite(tmp_path, two_lesions):
    table = lesion_table(*two_lesions, AFFINE)
    target = tmp_path / "lesions.csv"
    target.write_text("keep me")
    with pytest.raises(UserInputError, match="already exists"):
        write_lesion_table(table, target)
    assert target.read_text() == "keep me"
    write_lesion_table(table, target, overwrite=True)
    assert target.read_text().startswith("lesion_id,")


def test_real_sarcoma_study_matches_direct_computation():
    if not STUDY.exists():
        pytest.skip(f"shared sample data absent: {STUDY}")
    import nibabel as nib

    seg, suv_image = nib.load(str(STUDY / "SEG.nii.gz")), nib.load(str(STUDY / "SUV.nii.gz"))
    mask = np.asanyarray(seg.dataobj) != 0
    suv = np.asanyarray(suv_image.dataobj)
    table = lesion_table(mask, suv, suv_image.affine)
    voxel_ml = float(np.prod(seg.header.get_zooms()[:3], dtype=np.float64)) / 1000
    assert table.total_mtv_ml == pytest.approx(mask.sum() * voxel_ml, rel=1e-6)
    assert table.suv_max == pytest.approx(float(suv[mask].max()))
    assert table.total_tlg == pytest.approx(float(suv[mask].astype(np.float64).sum()) * voxel_ml, rel=1e-6)
