"""``mirror-unet evaluate`` end to end on tiny NIfTI folders (flat, AutoPET and MSD layouts)."""

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mirror_unet_hf.cli import main
from mirror_unet_hf.evaluation import evaluate_folders, find_ground_truth

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
AFFINE = np.diag([2.0, 2.0, 2.5, 1.0])  # 10 mm³ = 0.01 ml per voxel
VOXEL_ML = 0.01
SHAPE = (8, 8, 8)


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.uint8), affine), str(path))
    return path


def lesion_mask() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[1:3, 1:3, 1:3] = 1  # 8 voxels
    return mask


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as file:
        return {row["case_id"]: row for row in csv.DictReader(file)}


@pytest.fixture
def folders(tmp_path):
    """GT: caseA (8-voxel lesion), caseB (no lesion), caseC (lesion). Predictions for A and B only.

    caseA prediction: half the lesion (4 voxels) + 1 isolated voxel → Dice 2·4/(5+8) = 8/13, FPV 0.01 ml, FNV 0.
    caseB prediction: 2 separate voxels → FPV 0.02 ml, Dice and FNV undefined.
    """
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    save(gt_dir / "caseA.nii.gz", lesion_mask())
    save(gt_dir / "caseB.nii.gz", np.zeros(SHAPE))
    save(gt_dir / "caseC.nii.gz", lesion_mask())
    pred_a = np.zeros(SHAPE)
    pred_a[1:3, 1:3, 1] = 1
    pred_a[6, 6, 6] = 1
    pred_b = np.zeros(SHAPE)
    pred_b[0, 0, 0] = pred_b[5, 5, 5] = 1
    save(pred_dir / "caseA.nii.gz", pred_a)
    save(pred_dir / "caseB.nii.gz", pred_b)
    return pred_dir, gt_dir


def evaluate(pred_dir, gt_dir, out, *extra, task="autopet"):
    return main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--task", task, "--out", str(out), *extra])


def test_missing_prediction_is_reported_and_exits_1(tmp_path, folders, capsys):
    out = tmp_path / "metrics.csv"
    assert evaluate(*folders, out) == 1
    rows = read_csv(out)
    assert list(rows) == ["caseA", "caseB", "caseC", "mean"]
    assert rows["caseC"]["status"] == "missing prediction"
    assert rows["caseC"]["dice"] == ""
    assert "caseC" in capsys.readouterr().err


def test_csv_holds_hand_computed_metrics_and_challenge_means(tmp_path, folders):
    out = tmp_path / "metrics.csv"
    evaluate(*folders, out)
    rows = read_csv(out)
    assert float(rows["caseA"]["dice"]) == pytest.approx(8 / 13)
    assert float(rows["caseA"]["fpv_ml"]) == pytest.approx(VOXEL_ML)
    assert float(rows["caseA"]["fnv_ml"]) == 0.0
    assert (rows["caseB"]["dice"], rows["caseB"]["fnv_ml"]) == ("", "")
    assert float(rows["caseB"]["fpv_ml"]) == pytest.approx(2 * VOXEL_ML)
    # Dice and FNV over studies with lesions (caseA only), FPV over all scored studies (A and B).
    assert float(rows["mean"]["dice"]) == pytest.approx(8 / 13)
    assert float(rows["mean"]["fnv_ml"]) == 0.0
    assert float(rows["mean"]["fpv_ml"]) == pytest.approx(1.5 * VOXEL_ML)


def test_all_predictions_present_exits_0_and_writes_json(tmp_path, folders, capsys):
    pred_dir, gt_dir = folders
    save(pred_dir / "caseC.nii.gz", lesion_mask())
    out, out_json = tmp_path / "metrics.csv", tmp_path / "metrics.json"
    assert evaluate(pred_dir, gt_dir, out, "--json", str(out_json)) == 0
    payload = json.loads(out_json.read_text())
    assert [row["case_id"] for row in payload["studies"]] == ["caseA", "caseB", "caseC"]
    assert payload["studies"][2]["dice"] == 1.0
    assert payload["mean"]["dice"] == pytest.approx((8 / 13 + 1) / 2)
    assert payload["missing_predictions"] == [] and payload["failures"] == []
    assert "3 scored" in capsys.readouterr().out


def test_existing_output_is_refused_without_overwrite(tmp_path, folders, capsys):
    out = tmp_path / "metrics.csv"
    out.write_text("previous results")
    assert evaluate(*folders, out) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_text() == "previous results"
    assert evaluate(*folders, out, "--overwrite") == 1  # caseC is still missing
    assert "caseA" in read_csv(out)


@pytest.mark.parametrize("prefix", ["FDG-PET-CT-Lesions/", ""])
def test_autopet_layout_ground_truth_uses_patient_and_study_as_case_id(tmp_path, prefix):
    gt_dir, pred_dir = tmp_path / "data", tmp_path / "pred"
    save(gt_dir / f"{prefix}PETCT_0a/01-2001-NA-PET/SEG.nii.gz", lesion_mask())
    save(gt_dir / f"{prefix}PETCT_0a/01-2001-NA-PET/SUV.nii.gz", np.ones(SHAPE))
    save(pred_dir / "PETCT_0a_01-2001-NA-PET.nii.gz", lesion_mask())
    out = tmp_path / "metrics.csv"
    assert evaluate(pred_dir, gt_dir, out) == 0
    assert float(read_csv(out)["PETCT_0a_01-2001-NA-PET"]["dice"]) == 1.0


def test_real_autopet_studies_scored_against_themselves_are_perfect(tmp_path):
    gt_dir = SHARED_DATA / "autopet_layout"
    if not gt_dir.exists():
        pytest.skip(f"shared sample data absent: {gt_dir}")
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for case_id, seg in find_ground_truth(gt_dir).items():
        shutil.copy(seg, pred_dir / f"{case_id}.nii.gz")
    report = evaluate_folders(pred_dir, gt_dir, "autopet")
    assert [row["case_id"] for row in report.rows] == [
        "PETCT_sts002_01-01-2000-NA-study",
        "PETCT_sts003_01-01-2000-NA-study",
    ]
    assert [(row["dice"], row["fpv_ml"], row["fnv_ml"]) for row in report.rows] == [(1.0, 0.0, 0.0)] * 2
    assert report.rows[0]["gt_volume_ml"] == pytest.approx(54, abs=1)  # README: tumour ≈ 54 ml


def test_real_msd_case_scored_against_itself_is_perfect_with_empty_et(tmp_path):
    gt_dir = SHARED_DATA / "msd_task01_sample"
    if not gt_dir.exists():
        pytest.skip(f"shared sample data absent: {gt_dir}")
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    shutil.copy(gt_dir / "labelsTr" / "BRATS_sample.nii.gz", pred_dir / "BRATS_sample.nii.gz")
    out = tmp_path / "metrics.csv"
    assert evaluate(pred_dir, gt_dir, out, task="brain_tumour") == 0
    row = read_csv(out)["BRATS_sample"]
    columns = ("dice_wt", "dice_tc", "dice_et", "hd95_wt", "hd95_tc", "hd95_et")
    assert [float(row[c]) for c in columns] == [1, 1, 1, 0, 0, 0]


def test_msd_layout_case_ids_and_label_check(tmp_path, capsys):
    labels = np.zeros(SHAPE)
    labels[2:4, 2:4, 2:4] = 5  # not an MSD BrainTumour label
    save(tmp_path / "Task01_BrainTumour" / "labelsTr" / "BRATS_001.nii.gz", labels)
    (tmp_path / "Task01_BrainTumour" / "labelsTr" / "._BRATS_001.nii.gz").write_bytes(b"macOS resource fork")
    save(tmp_path / "pred" / "BRATS_001.nii.gz", np.zeros(SHAPE))
    assert evaluate(tmp_path / "pred", tmp_path, tmp_path / "m.csv", task="brain_tumour") == 2
    err = capsys.readouterr().err
    assert "BRATS_001.nii.gz" in err and "[5]" in err


def test_unreadable_prediction_stops_with_its_name(tmp_path, folders, capsys):
    pred_dir, gt_dir = folders
    (pred_dir / "caseA.nii.gz").write_bytes(b"not a nifti file")
    out = tmp_path / "metrics.csv"
    assert evaluate(pred_dir, gt_dir, out) == 2
    assert "caseA.nii.gz" in capsys.readouterr().err
    assert not out.exists()


def test_skip_bad_scores_the_rest_and_lists_failures(tmp_path, folders, capsys):
    pred_dir, gt_dir = folders
    (pred_dir / "caseA.nii.gz").write_bytes(b"not a nifti file")
    save(pred_dir / "caseC.nii.gz", lesion_mask())
    out = tmp_path / "metrics.csv"
    assert evaluate(pred_dir, gt_dir, out, "--skip-bad") == 1
    rows = read_csv(out)
    assert rows["caseA"]["status"] == "error"
    assert "caseA.nii.gz" in rows["caseA"]["message"]
    assert float(rows["caseC"]["dice"]) == 1.0
    assert "failed: caseA" in capsys.readouterr().err


def test_prediction_on_another_shape_is_an_error_naming_both_files(tmp_path, folders, capsys):
    pred_dir, gt_dir = folders
    save(pred_dir / "caseA.nii.gz", np.zeros((8, 8, 7)))
    assert evaluate(pred_dir, gt_dir, tmp_path / "m.csv") == 2
    err = capsys.readouterr().err
    assert "shape (8, 8, 7)" in err and "caseA.nii.gz" in err


def test_prediction_on_a_shifted_grid_is_an_error(tmp_path, folders, capsys):
    pred_dir, gt_dir = folders
    shifted = AFFINE.copy()
    shifted[0, 3] = 1.0  # half a voxel
    save(pred_dir / "caseA.nii.gz", lesion_mask(), shifted)
    assert evaluate(pred_dir, gt_dir, tmp_path / "m.csv") == 2
    assert "affine" in capsys.readouterr().err


def test_ground_truth_folder_without_masks_is_a_user_error(tmp_path, capsys):
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "notes.txt").write_text("no masks here")
    (tmp_path / "pred").mkdir()
    assert evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "m.csv") == 2
    assert "holds no ground truth" in capsys.readouterr().err
