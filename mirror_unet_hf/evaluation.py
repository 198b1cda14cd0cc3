"""Score a folder of predicted masks against ground truth, study by study, and write the metrics table.

Predictions are a flat folder of ``<case_id>.nii.gz`` (what ``mirror-unet predict --out-dir`` writes).
Ground truth is a flat folder of ``<case_id>.nii.gz``, an AutoPET dataset folder
(``[FDG-PET-CT-Lesions/]<patient>/<study>/SEG.nii.gz``, case id ``<patient>_<study>``), an MSD folder
(``[Task01_BrainTumour/]labelsTr/BRATS_XXX.nii.gz``, case id ``BRATS_XXX``) or an autoPET III/IV folder
(``labelsTr/<case>.nii.gz``): any registered task's layout (``TaskSpec.ground_truth`` in ``mirror_unet_hf.tasks``).
Where the task sorts studies into groups (``TaskSpec.case_group``: autoPET's tracers), the table has a
``mean <group>`` row per group after the overall mean.
"""

from __future__ import annotations

import csv
import io
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .data.nifti_io import load_nifti, read_array, require_3d
from .errors import UserInputError
from .files import atomic_write_text, json_text, nifti_stem
from .tasks import detection_order, get_task, task_names

# Largest allowed difference between prediction and ground-truth affines (mm): float32 headers round
# world positions of ~1 m to ~1e-4 mm, while a real grid mismatch moves them by a fraction of a voxel.
AFFINE_TOLERANCE_MM = 1e-3
STATUS_OK = "ok"
STATUS_MISSING = "missing prediction"
STATUS_ERROR = "error"


def flat_niftis(folder: Path) -> dict[str, Path]:
    """``case_id -> path`` for the NIfTI files directly in ``folder`` (hidden files such as MSD's ``._*`` skipped)."""
    found: dict[str, Path] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError as error:
        raise UserInputError(f"{folder}: cannot list the folder ({error.strerror})") from None
    for path in entries:
        case_id = nifti_stem(path.name)
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
    return flat_niftis(_existing_dir(pred_dir, "--pred"))


def find_ground_truth(gt_dir: str | Path, task: str | None = None) -> dict[str, Path]:
    """``case_id -> path`` of the ground-truth masks: the first task whose layout the folder holds
    (``TaskSpec.ground_truth``; ``task`` asked first, then ``detection_order``), else a flat folder of
    ``<case_id>.nii.gz``."""
    root = _existing_dir(gt_dir, "--gt")
    first = (get_task(task),) if task is not None else ()
    for candidate in (*first, *detection_order()):
        found = candidate.ground_truth(root)
        if found is not None:
            return found
    found = flat_niftis(root)
    if not found:
        raise UserInputError(
            f"--gt {root} holds no ground truth; expected <case_id>.nii.gz files, an AutoPET folder "
            "(<patient>/<study>/SEG.nii.gz) or an MSD / nnU-Net folder (labelsTr/)"
        )
    return found


@dataclass(frozen=True)
class Mask:
    """A mask read from a NIfTI file: data as stored (no float64 copy), its affine and voxel spacing (mm)."""

    path: Path
    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]


def load_mask(path: str | Path, task: str | None = None) -> Mask:
    """Read a 3D NIfTI mask (a trailing singleton 4th axis is dropped); a bad file raises ``UserInputError``.

    The header is checked before reading (``mirror_unet_hf.data.nifti_io``); with ``task`` the values must
    be the task's labels (``TaskSpec.mask_values``): integers, no NaN, nothing negative or above the last label.
    """
    path = Path(path)
    image = load_nifti(path, None, str(path))
    data = require_3d(read_array(image, None, str(path), dtype=None), None, str(path))
    if task is not None:
        check_mask_values(data, path, task)
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    return Mask(path=path, data=data, affine=np.asarray(image.affine, dtype=np.float64), spacing=spacing)


def check_mask_values(data: np.ndarray, path: Path, task: str) -> None:
    """Raise ``UserInputError`` unless ``data`` holds only the label values of ``task``."""
    task = get_task(task)
    highest, values = task.max_label, task.mask_values
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            raise UserInputError(f"{path}: {data.size - int(finite.sum())} NaN/Inf voxels; expected labels {values}")
        fractional = data != np.round(data)
        if fractional.any():
            examples = np.unique(data[fractional])[:3].tolist()
            raise UserInputError(f"{path}: fractional values such as {examples}; expected labels {values}")
    if data.size and (data.min() < 0 or data.max() > highest):
        bad = np.unique(data[(data < 0) | (data > highest)])[:5]
        shown = [int(v) for v in bad] if data.dtype.kind in "iuf" else bad.tolist()
        raise UserInputError(f"{path}: has label values {shown}; expected {values}")


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
    pred, gt = load_mask(pred_path, task), load_mask(gt_path, task)
    check_same_grid(pred, gt)
    try:
        return get_task(task).score(pred.data, gt.data, gt.spacing)
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
    group_means: list[dict] = field(default_factory=list)
    """One ``mean <group>`` row per group of studies (``TaskSpec.case_group``: ``mean fdg``, ``mean psma``)."""
    unmatched_predictions: list[str] = field(default_factory=list)
    tracebacks: dict[str, str] = field(default_factory=dict)
    """case_id -> traceback of an internal error met with ``skip_bad`` (a bug to report, not a bad file)."""

    @property
    def columns(self) -> tuple[str, ...]:
        return ("case_id", "status", *get_task(self.task).metric_columns, "message")

    @property
    def exit_code(self) -> int:
        """0 when every study was scored; 1 when a prediction is missing or a study failed."""
        return 1 if self.missing or self.failures else 0

    def table(self) -> list[dict]:
        return [*self.rows, self.mean, *self.group_means]


def _row(case_id: str, task: str, status: str, message: str = "", metrics: dict | None = None) -> dict:
    metrics = metrics or {}
    values = {column: metrics.get(column) for column in get_task(task).metric_columns}
    return {"case_id": case_id, "status": status, **values, "message": message}


def mean_row(rows: Sequence[dict], task: str, name: str = "mean") -> dict:
    """Mean of each metric over the scored studies where it is defined (the row's ``case_id`` is ``name``).

    For AutoPET this is the challenge's aggregation: Dice and FNV over studies with lesions (they are
    None elsewhere), FPV over all scored studies. For BrainTumour, HD95 skips its undefined (None) values.
    """
    scored = [row for row in rows if row["status"] == STATUS_OK]
    means: dict[str, float | None] = {}
    for column in get_task(task).metric_columns:
        values = [row[column] for row in scored if row[column] is not None]
        means[column] = float(np.mean(values)) if values else None
    return _row(name, task, f"mean of {len(scored)} scored", get_task(task).mean_note(scored), means)


def group_mean_rows(rows: Sequence[dict], task: str) -> list[dict]:
    """A ``mean <group>`` row (``mean_row`` of that group's studies) for every group the task puts a study of
    ``rows`` in (``TaskSpec.case_group``), in sorted order; none when the task has no groups."""
    group_of = {row["case_id"]: get_task(task).case_group(row["case_id"]) for row in rows}
    groups = sorted({group for group in group_of.values() if group is not None})
    return [
        mean_row([row for row in rows if group_of[row["case_id"]] == group], task, f"mean {group}") for group in groups
    ]


def evaluate_folders(
    pred_dir: str | Path, gt_dir: str | Path, task: str, skip_bad: bool = False, progress: bool = False
) -> EvaluationReport:
    """Score every ground-truth study against its prediction.

    Args:
        pred_dir: flat folder of ``<case_id>.nii.gz`` predictions.
        gt_dir: ground truth (flat, AutoPET, MSD or autoPET III layout; see the module docstring).
        task: a task name (``"autopet"``: Dice, FPV, FNV; ``"brain_tumour"``: Dice and HD95 per WT/TC/ET).
        skip_bad: record an unreadable or mismatched study as an ``error`` row and go on; without it the
            first such study raises ``UserInputError``. An unexpected exception (a bug) in one study is
            recorded too, as ``internal error: ...`` with its traceback in ``report.tracebacks``.
        progress: show a progress bar on stderr.

    A ground-truth case without prediction becomes a ``missing prediction`` row (never skipped silently);
    predictions without ground truth are listed in ``unmatched_predictions``.
    """
    if task not in task_names():
        raise UserInputError(f"--task {task!r} is unknown; expected one of: {', '.join(task_names())}")
    ground_truth = find_ground_truth(gt_dir, task)
    predictions = find_predictions(pred_dir)
    rows, missing, failures, tracebacks = [], [], [], {}
    for case_id in tqdm(sorted(ground_truth), desc="evaluate", unit="study", disable=not progress):
        pred_path = predictions.get(case_id)
        if pred_path is None:
            message = f"no {case_id}.nii.gz in {pred_dir}"
            rows.append(_row(case_id, task, STATUS_MISSING, message))
            missing.append(case_id)
            continue
        try:
            metrics = evaluate_case(pred_path, ground_truth[case_id], task)
        except Exception as error:  # with skip_bad, one study's failure (even a bug) must not end the run
            if not skip_bad:
                raise
            message = (
                str(error) if isinstance(error, UserInputError) else f"internal error: {type(error).__name__}: {error}"
            )
            message = message.strip().splitlines()[0] if message.strip() else type(error).__name__
            if not isinstance(error, UserInputError):
                tracebacks[case_id] = traceback.format_exc()
            rows.append(_row(case_id, task, STATUS_ERROR, message))
            failures.append((case_id, message))
            continue
        rows.append(_row(case_id, task, STATUS_OK, metrics=metrics))
    return EvaluationReport(
        task=task,
        rows=rows,
        mean=mean_row(rows, task),
        missing=missing,
        failures=failures,
        group_means=group_mean_rows(rows, task),
        unmatched_predictions=sorted(set(predictions) - set(ground_truth)),
        tracebacks=tracebacks,
    )


def check_outputs_free(paths: Iterable[Path], overwrite: bool) -> None:
    """Refuse output paths that are folders, repeated, in no writable folder, or (without ``overwrite``) already exist."""
    paths = [Path(p) for p in paths]
    try:
        if len({p.resolve() for p in paths}) != len(paths):
            raise UserInputError(f"output paths {[str(p) for p in paths]} repeat; expected distinct files")
        for path in paths:
            if path.is_dir():
                raise UserInputError(f"output {path} is a folder; expected a file path")
            if path.exists() and not overwrite:
                raise UserInputError(f"output {path} already exists; pass --overwrite (overwrite=True) to replace it")
            parent = next((p for p in path.parents if p.exists()), None)
            if parent is not None and not parent.is_dir():
                raise UserInputError(f"output {path}: {parent} is a file, not a folder")
    except OSError as error:  # e.g. a name longer than the file system allows
        raise UserInputError(f"output {error.filename or paths}: {error.strerror}") from None


def _write_atomic(text: str, path: Path, overwrite: bool) -> None:
    """Write to a temporary file in the target folder, then rename it into place."""
    check_outputs_free([path], overwrite)
    atomic_write_text(path, text)


def _csv_text(rows: Iterable[dict], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(rows: Iterable[dict], columns: Sequence[str], path: str | Path, overwrite: bool = False) -> None:
    """Write rows as CSV (None → empty cell, floats at full precision), atomically."""
    _write_atomic(_csv_text(rows, columns), Path(path), overwrite)


def write_json(payload: object, path: str | Path, overwrite: bool = False) -> None:
    """Write strict JSON (no NaN/inf), atomically."""
    _write_atomic(json_text(payload), Path(path), overwrite)


def write_report(
    report: EvaluationReport, csv_path: str | Path, json_path: str | Path | None = None, overwrite: bool = False
) -> None:
    """Write the per-study rows and the mean row as CSV, and optionally everything as JSON.

    Both texts are made before either file is written, so a failure leaves no file behind.
    """
    paths = [Path(csv_path)] + ([Path(json_path)] if json_path is not None else [])
    check_outputs_free(paths, overwrite)
    texts = [_csv_text(report.table(), report.columns)]
    if json_path is not None:
        payload = {
            "task": report.task,
            "studies": report.rows,
            "mean": report.mean,
            "group_means": report.group_means,
            "missing_predictions": report.missing,
            "failures": [{"case_id": case_id, "message": message} for case_id, message in report.failures],
            "unmatched_predictions": report.unmatched_predictions,
        }
        texts.append(json_text(payload))
    for path, text in zip(paths, texts):
        _write_atomic(text, path, overwrite)
