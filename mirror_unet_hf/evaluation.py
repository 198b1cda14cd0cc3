"""Score a folder of predicted masks against ground truth, study by study, and write the metrics table.

Predictions are a flat folder of ``<case_id>.nii.gz`` (what ``mirror-unet predict --out-dir`` writes).
Ground truth is a flat folder of ``<case_id>.nii.gz``, an AutoPET dataset folder
(``[FDG-PET-CT-Lesions/]<patient>/<study>/SEG.nii.gz``, case id ``<patient>_<study>``) or an MSD folder
(``[Task01_BrainTumour/]labelsTr/BRATS_XXX.nii.gz``, case id ``BRATS_XXX``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import tempfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from .errors import UserInputError
from .metrics import autopet_metrics, brats_metrics

TASKS = ("autopet", "brain_tumour")
METRIC_COLUMNS: dict[str, tuple[str, ...]] = {
    "autopet": (
        "dice",
        "fpv_ml",
        "fnv_ml",
        "gt_volume_ml",
        "pred_volume_ml",
        "gt_lesions",
        "missed_lesions",
        "false_positive_components",
    ),
    "brain_tumour": ("dice_wt", "dice_tc", "dice_et", "hd95_wt", "hd95_tc", "hd95_et"),
}
# Largest allowed difference between prediction and ground-truth affines (mm): float32 headers round
# world positions of ~1 m to ~1e-4 mm, while a real grid mismatch moves them by a fraction of a voxel.
AFFINE_TOLERANCE_MM = 1e-3
NIFTI_SUFFIXES = (".nii.gz", ".nii")
STATUS_OK = "ok"
STATUS_MISSING = "missing prediction"
STATUS_ERROR = "error"
# What nibabel raises on a file that is not (or no longer, e.g. truncated) a NIfTI image.
_READ_ERRORS = (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error, struct.error)


def _case_id(path: Path) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def _flat_niftis(folder: Path) -> dict[str, Path]:
    """``case_id -> path`` for the NIfTI files directly in ``folder`` (hidden files such as MSD's ``._*`` skipped)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        case_id = _case_id(path)
        if case_id is None or path.name.startswith(".") or not path.is_file():
            continue
        if case_id in found:
            raise UserInputError(
                f"{folder}: both {found[case_id].name} and {path.name} exist; expected one file per case"
            )
        found[case_id] = path
    return found


def _existing_dir(folder: str | Path, flag: str) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"{flag} {folder} is not a folder; expected a folder of NIfTI masks")
    return folder


def find_predictions(pred_dir: str | Path) -> dict[str, Path]:
    """``case_id -> path`` of the ``<case_id>.nii.gz`` (or ``.nii``) files in a flat prediction folder."""
    return _flat_niftis(_existing_dir(pred_dir, "--pred"))


def find_ground_truth(gt_dir: str | Path) -> dict[str, Path]:
    """``case_id -> path`` of the ground-truth masks, detecting the layout (MSD, then AutoPET, then flat)."""
    root = _existing_dir(gt_dir, "--gt")
    for labels_dir in (root / "labelsTr", root / "Task01_BrainTumour" / "labelsTr"):
        if labels_dir.is_dir():
            return _flat_niftis(labels_dir)
    autopet_root = root / "FDG-PET-CT-Lesions" if (root / "FDG-PET-CT-Lesions").is_dir() else root
    segs = sorted(autopet_root.glob("*/*/SEG.nii.gz"))
    if segs:
        found: dict[str, Path] = {}
        for seg in segs:
            case_id = f"{seg.parent.parent.name}_{seg.parent.name}"
            if case_id in found:
                raise UserInputError(f"{seg} and {found[case_id]} both map to case id {case_id}; expected unique ids")
            found[case_id] = seg
        return found
    found = _flat_niftis(root)
    if not found:
        raise UserInputError(
            f"--gt {root} holds no ground truth; expected <case_id>.nii.gz files, an AutoPET folder "
            "(<patient>/<study>/SEG.nii.gz) or an MSD folder (labelsTr/)"
        )
    return found


@dataclass(frozen=True)
class Mask:
    """A mask read from a NIfTI file: data as stored (no float64 copy), its affine and voxel spacing (mm)."""

    path: Path
    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]


def load_mask(path: str | Path) -> Mask:
    """Read a 3D NIfTI mask (a trailing singleton 4th axis is dropped); unreadable files raise ``UserInputError``."""
    path = Path(path)
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except _READ_ERRORS as error:
        raise UserInputError(f"{path}: cannot read as NIfTI ({error}); expected a .nii or .nii.gz mask") from error
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise UserInputError(f"{path}: shape {data.shape}; expected a 3D mask")
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    return Mask(path=path, data=data, affine=np.asarray(image.affine, dtype=np.float64), spacing=spacing)


def check_same_grid(pred: Mask, gt: Mask) -> None:
    """Raise ``UserInputError`` unless the prediction lies on the ground-truth grid (shape and affine)."""
    if pred.data.shape != gt.data.shape:
        raise UserInputError(
            f"{pred.path}: shape {pred.data.shape} differs from ground truth {gt.path} {gt.data.shape}; "
            "expected predictions on the ground-truth grid"
        )
    deviation = float(np.max(np.abs(pred.affine - gt.affine)))
    if deviation > AFFINE_TOLERANCE_MM:
        raise UserInputError(
            f"{pred.path}: affine differs from ground truth {gt.path} by up to {deviation:.4g} mm; "
            f"expected the same grid (tolerance {AFFINE_TOLERANCE_MM} mm)"
        )


def evaluate_case(pred_path: str | Path, gt_path: str | Path, task: str) -> dict[str, float | int | None]:
    """Metrics of one study; voxel spacing from the ground-truth header (as the AutoPET script does)."""
    pred, gt = load_mask(pred_path), load_mask(gt_path)
    check_same_grid(pred, gt)
    try:
        if task == "autopet":
            return autopet_metrics(pred.data, gt.data, gt.spacing).as_dict()
        return brats_metrics(pred.data, gt.data, gt.spacing).as_dict()
    except UserInputError as error:
        raise UserInputError(f"{pred.path} vs {gt.path}: {error}") from error


@dataclass
class EvaluationReport:
    """Per-study rows (one per ground-truth case, sorted by case id), the mean row, and what went wrong."""

    task: str
    rows: list[dict]
    mean: dict
    missing: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    unmatched_predictions: list[str] = field(default_factory=list)

    @property
    def columns(self) -> tuple[str, ...]:
        return ("case_id", "status", *METRIC_COLUMNS[self.task], "message")

    @property
    def exit_code(self) -> int:
        """0 when every study was scored; 1 when a prediction is missing or a study failed."""
        return 1 if self.missing or self.failures else 0

    def table(self) -> list[dict]:
        return [*self.rows, self.mean]


def _row(case_id: str, task: str, status: str, message: str = "", metrics: dict | None = None) -> dict:
    metrics = metrics or {}
    values = {column: metrics.get(column) for column in METRIC_COLUMNS[task]}
    return {"case_id": case_id, "status": status, **values, "message": message}


def mean_row(rows: Sequence[dict], task: str) -> dict:
    """Mean of each metric over the scored studies where it is defined.

    For AutoPET this is the challenge's aggregation: Dice and FNV over studies with lesions (they are
    None elsewhere), FPV over all scored studies. For BrainTumour, HD95 skips its undefined (None) values.
    """
    scored = [row for row in rows if row["status"] == STATUS_OK]
    means: dict[str, float | None] = {}
    for column in METRIC_COLUMNS[task]:
        values = [row[column] for row in scored if row[column] is not None]
        means[column] = float(np.mean(values)) if values else None
    if task == "autopet":
        with_lesions = sum(row["dice"] is not None for row in scored)
        note = f"dice, fnv_ml over the {with_lesions} with lesions"
    else:
        note = "hd95 over the studies where it is defined"
    return _row("mean", task, f"mean of {len(scored)} scored", note, means)


def evaluate_folders(
    pred_dir: str | Path, gt_dir: str | Path, task: str, skip_bad: bool = False, progress: bool = False
) -> EvaluationReport:
    """Score every ground-truth study against its prediction.

    Args:
        pred_dir: flat folder of ``<case_id>.nii.gz`` predictions.
        gt_dir: ground truth (flat, AutoPET or MSD layout; see the module docstring).
        task: ``"autopet"`` (Dice, FPV, FNV) or ``"brain_tumour"`` (Dice and HD95 per WT/TC/ET).
        skip_bad: record an unreadable or mismatched study as an ``error`` row and go on; without it the
            first such study raises ``UserInputError``.
        progress: show a progress bar on stderr.

    A ground-truth case without prediction becomes a ``missing prediction`` row (never skipped silently);
    predictions without ground truth are listed in ``unmatched_predictions``.
    """
    if task not in TASKS:
        raise UserInputError(f"--task {task!r} is unknown; expected one of: {', '.join(TASKS)}")
    ground_truth = find_ground_truth(gt_dir)
    predictions = find_predictions(pred_dir)
    rows, missing, failures = [], [], []
    for case_id in tqdm(sorted(ground_truth), desc="evaluate", unit="study", disable=not progress):
        pred_path = predictions.get(case_id)
        if pred_path is None:
            message = f"no {case_id}.nii.gz in {pred_dir}"
            rows.append(_row(case_id, task, STATUS_MISSING, message))
            missing.append(case_id)
            continue
        try:
            metrics = evaluate_case(pred_path, ground_truth[case_id], task)
        except UserInputError as error:
            if not skip_bad:
                raise
            rows.append(_row(case_id, task, STATUS_ERROR, str(error)))
            failures.append((case_id, str(error)))
            continue
        rows.append(_row(case_id, task, STATUS_OK, metrics=metrics))
    return EvaluationReport(
        task=task,
        rows=rows,
        mean=mean_row(rows, task),
        missing=missing,
        failures=failures,
        unmatched_predictions=sorted(set(predictions) - set(ground_truth)),
    )


def check_outputs_free(paths: Iterable[Path], overwrite: bool) -> None:
    """Refuse output paths that are folders, repeated, or (without ``overwrite``) already exist."""
    paths = [Path(p) for p in paths]
    if len({p.resolve() for p in paths}) != len(paths):
        raise UserInputError(f"output paths {[str(p) for p in paths]} repeat; expected distinct files")
    for path in paths:
        if path.is_dir():
            raise UserInputError(f"output {path} is a folder; expected a file path")
        if path.exists() and not overwrite:
            raise UserInputError(f"output {path} already exists; pass --overwrite (overwrite=True) to replace it")


def _write_atomic(text: str, path: Path, overwrite: bool) -> None:
    """Write to a temporary file in the target folder, then rename it into place."""
    check_outputs_free([path], overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_csv(rows: Iterable[dict], columns: Sequence[str], path: str | Path, overwrite: bool = False) -> None:
    """Write rows as CSV (None → empty cell, floats at full precision), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic(buffer.getvalue(), Path(path), overwrite)


def write_json(payload: object, path: str | Path, overwrite: bool = False) -> None:
    """Write strict JSON (no NaN/inf), atomically."""
    _write_atomic(json.dumps(payload, indent=2, allow_nan=False) + "\n", Path(path), overwrite)


def write_report(
    report: EvaluationReport, csv_path: str | Path, json_path: str | Path | None = None, overwrite: bool = False
) -> None:
    """Write the per-study rows and the mean row as CSV, and optionally everything as JSON."""
    paths = [Path(csv_path)] + ([Path(json_path)] if json_path is not None else [])
    check_outputs_free(paths, overwrite)
    write_csv(report.table(), report.columns, paths[0], overwrite)
    if json_path is not None:
        payload = {
            "task": report.task,
            "studies": report.rows,
            "mean": report.mean,
            "missing_predictions": report.missing,
            "failures": [{"case_id": case_id, "message": message} for case_id, message in report.failures],
            "unmatched_predictions": report.unmatched_predictions,
        }
        write_json(payload, paths[1], overwrite)
