"""AutoPET 2022 (FDG-PET-CT-Lesions, TCIA): whole-body FDG PET/CT with a lesion mask per study.

Layout: ``FDG-PET-CT-Lesions/<patient>/<study>/{CTres,SUV,SEG}.nii.gz`` (CT resampled to the PET grid,
PET in SUV, lesion mask on the PET grid), optionally with the TCIA metadata CSV
(``Clinical Metadata FDG PET_CT Lesions.csv``: ``Subject ID``, ``Study Date``, ``diagnosis``) inside the
folder or next to it; without it every diagnosis is ``"unknown"``. Case id: ``<patient>_<study>``.
Metrics: the challenge's Dice, false-positive and false-negative volume (18-connected components).
"""

from __future__ import annotations

import csv
import datetime
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data.constants import (
    AUTOPET_FILES,
    AUTOPET_FOLDER,
    AUTOPET_LABEL_FILE,
    AUTOPET_LABEL_NAMES,
    AUTOPET_METADATA_CSV,
    AUTOPET_MODALITIES,
    AUTOPET_TRACERS,
    DIAGNOSIS_NAMES,
    UNKNOWN_DIAGNOSIS,
    diagnosis_from_metadata,
)
from ..data.nifti_io import (
    grid_of,
    grids_overlap,
    nifti_from_bytes,
    read_array,
    read_bytes,
    require_3d,
    require_finite,
    require_label_values,
    same_grid,
    where,
)
from ..errors import UserInputError
from ..metrics import autopet_metrics
from .base import StudyFiles, TaskSpec
from .registry import register_task


def case_id(patient: str, study: str) -> str:
    """The AutoPET case id of a study folder: ``<patient>_<study>`` (predictions are named after it)."""
    return f"{patient}_{study}"


def case_tracer(case_id: str) -> str | None:
    """The tracer an autoPET III/IV case id starts with (``"fdg"`` of ``fdg_3c6e4f2a1b_05-02-2002``), or None."""
    prefix = case_id.split("_", 1)[0]
    return prefix if prefix in AUTOPET_TRACERS and "_" in case_id else None


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_date(name: str) -> datetime.date | None:
    match = re.match(r"(\d{2})-(\d{2})-(\d{4})", name)
    if not match:
        return None
    try:
        return datetime.date(int(match[3]), int(match[1]), int(match[2]))
    except ValueError:
        return None


def _csv_date(text: str | None) -> datetime.date | None:
    for pattern in ("%m/%d/%Y", "%m-%d-%Y", "%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.datetime.strptime((text or "").strip(), pattern).date()
        except ValueError:
            continue
    return None


def read_metadata(paths: Sequence[Path]) -> tuple[dict, dict]:
    """``{(patient, study date): diagnosis}`` and ``{patient: {diagnoses}}`` from the metadata CSVs found."""
    by_study: dict[tuple[str, datetime.date | None], str] = {}
    by_patient: dict[str, set[str]] = {}
    for path in paths:
        try:
            with open(path, newline="", encoding="utf-8-sig") as stream:
                reader = csv.DictReader(stream)
                columns = {(c or "").strip().lower(): c for c in reader.fieldnames or []}
                if "subject id" not in columns or "diagnosis" not in columns:
                    continue  # some other CSV
                for row in reader:
                    patient = (row.get(columns["subject id"]) or "").strip()
                    if not patient:
                        continue
                    diagnosis = diagnosis_from_metadata(row.get(columns["diagnosis"]))
                    date = _csv_date(row.get(columns["study date"])) if "study date" in columns else None
                    by_study.setdefault((patient, date), diagnosis)
                    by_patient.setdefault(patient, set()).add(diagnosis)
        except (UnicodeDecodeError, csv.Error) as error:
            raise UserInputError(f"metadata file {str(path)!r} is not a readable CSV ({error})") from None
    return by_study, by_patient


class AutoPETTask(TaskSpec):
    name = "autopet"
    aliases = ("autopet2022", "fdgpetctlesions")
    title = "AutoPET (FDG-PET-CT-Lesions)"
    contents = "AutoPET studies"
    description = "AutoPET FDG-PET/CT: CTres, SUV and lesion mask per study."
    folder = AUTOPET_FOLDER
    layout_hint = f"{AUTOPET_FOLDER}/<patient>/<study>/{{CTres,SUV,SEG}}.nii.gz"
    modalities = AUTOPET_MODALITIES
    label_names = AUTOPET_LABEL_NAMES
    record_columns = ("diagnosis",)
    stratify_column = "diagnosis"
    stratum_values = DIAGNOSIS_NAMES
    domain, domain_tag = "PET/CT", "pet-ct"
    segmentation_name = "3D lesion segmentation"
    metric_labels = {
        "dice": ("Dice", ""),
        "fpv_ml": ("False-positive volume", "ml"),
        "fnv_ml": ("False-negative volume", "ml"),
    }
    preprocessing_modalities = AUTOPET_MODALITIES
    reference_modality = "pet"
    target_spacing = (2.0, 2.0, 3.0)
    intensity_windows = {"ct": (-100.0, 250.0), "pet": (0.0, 15.0)}
    metric_columns = (
        "dice",
        "fpv_ml",
        "fnv_ml",
        "gt_volume_ml",
        "pred_volume_ml",
        "gt_lesions",
        "missed_lesions",
        "false_positive_components",
    )
    validation_columns = ("dice", "fpv_ml", "fnv_ml")
    phantom_shape = (96, 96, 80)

    # ------------------------------------------------------------------------------ layout

    def find_root(self, data_dir: Path) -> Path | None:
        if (data_dir / AUTOPET_FOLDER).is_dir():
            return data_dir / AUTOPET_FOLDER
        if data_dir.name == AUTOPET_FOLDER or any(data_dir.glob(f"*/*/{AUTOPET_FILES['pet']}")):
            return data_dir
        return None

    def metadata_files(self, root: Path) -> list[Path]:
        return sorted(root.glob("*.csv")) + sorted(root.parent.glob("*.csv"))

    def discover(self, root: Path) -> list[StudyFiles]:
        by_study, by_patient = read_metadata(self.metadata_files(root))
        studies = []
        for patient in _subfolders(root):
            study_dirs = _subfolders(patient)
            if not study_dirs:
                problem = (
                    f"study {patient.name!r}: patient folder has no study folders; expected "
                    f"{patient.name}/<study>/{{CTres,SUV,SEG}}.nii.gz"
                )
                studies.append(StudyFiles(patient.name, patient.name, patient.name, problem=problem))
                continue
            for study in study_dirs:
                files = {modality: study / filename for modality, filename in AUTOPET_FILES.items()}
                files["label"] = study / AUTOPET_LABEL_FILE
                diagnosis = by_study.get((patient.name, _folder_date(study.name)))
                if diagnosis is None and len(by_patient.get(patient.name, ())) == 1:
                    diagnosis = next(iter(by_patient[patient.name]))
                studies.append(
                    StudyFiles(
                        case_id=case_id(patient.name, study.name),
                        patient_id=patient.name,
                        name=f"{patient.name}/{study.name}",
                        files=files,
                        diagnosis=diagnosis or UNKNOWN_DIAGNOSIS,
                    )
                )
        return studies

    def read_study(self, study: StudyFiles) -> dict:
        record = {
            "case_id": study.case_id,
            "patient_id": study.patient_id,
            "diagnosis": study.diagnosis or UNKNOWN_DIAGNOSIS,
        }
        grids = {}
        for role in (*AUTOPET_FILES, "label"):
            filename = study.files[role].name
            data = read_bytes(study.files[role], study.name, filename)
            image = nifti_from_bytes(data, study.name, filename)
            array = require_3d(read_array(image, study.name, filename), study.name, filename)
            if role == "label":
                require_label_values(array, len(AUTOPET_LABEL_NAMES), study.name, filename)
            else:
                require_finite(array, study.name, filename)
            grids[role] = grid_of(image)
            record[role] = {"bytes": data, "path": None}  # path None: a local path would make datasets drop the bytes
        if not same_grid(grids["label"], grids["pet"]):
            raise UserInputError(
                f"{where(study.name, AUTOPET_LABEL_FILE)}: grid (shape {grids['label'].shape}) disagrees with "
                f"{AUTOPET_FILES['pet']} (shape {grids['pet'].shape}); expected the same shape and affine"
            )
        if not grids_overlap(grids["ct"], grids["pet"]):
            raise UserInputError(
                f"{where(study.name, AUTOPET_FILES['ct'])}: does not overlap {AUTOPET_FILES['pet']} in world space"
            )
        record["spacing"] = list(grids["pet"].spacing)
        record["shape"] = list(grids["pet"].shape)
        return record

    def prediction_input(self, study: StudyFiles) -> Path:
        return study.files["pet"].parent

    def ground_truth(self, folder: Path) -> dict[str, Path] | None:
        root = folder / AUTOPET_FOLDER if (folder / AUTOPET_FOLDER).is_dir() else folder
        segs = sorted(root.glob(f"*/*/{AUTOPET_LABEL_FILE}"))
        if not segs:
            return None
        found: dict[str, Path] = {}
        for seg in segs:
            key = case_id(seg.parent.parent.name, seg.parent.name)
            if key in found:
                raise UserInputError(f"{seg} and {found[key]} both map to case id {key}; expected unique ids")
            found[key] = seg
        return found

    def modality_file_names(self, modality: str) -> tuple[str, ...]:
        return (AUTOPET_FILES[modality],) if modality in AUTOPET_FILES else ()

    # ------------------------------------------------------------------------------ Hub dataset repos

    def repo_layout(self, names: Sequence[str]) -> dict | None:
        studies = sorted({n.rsplit("/", 1)[0] for n in names if n.endswith(f"/{AUTOPET_LABEL_FILE}")})
        if not studies:
            return None
        summary = (
            f"AutoPET layout: {len(studies)} studies as `<patient>/<study>/` folders, each with "
            "`CTres.nii.gz` (CT on the PET grid, HU), `SUV.nii.gz` (PET in SUV) and `SEG.nii.gz` (lesion mask, 0/1)"
        )
        return {"summary": summary, "studies": len(studies), "example": studies[0]}

    def repo_study_rows(self, names: set[str]) -> list[dict]:
        columns = {**AUTOPET_FILES, "seg": AUTOPET_LABEL_FILE}
        rows = []
        for study in sorted({n.rsplit("/", 1)[0] for n in names if n.endswith(f"/{AUTOPET_LABEL_FILE}")}):
            paths = {column: f"{study}/{file}" for column, file in columns.items()}
            if all(path in names for path in paths.values()):
                parts = study.split("/")
                key = case_id(*parts[-2:]) if len(parts) >= 2 else parts[-1]
                rows.append({"case_id": key, **{f"{c}_file_name": p for c, p in paths.items()}})
        return rows

    # ------------------------------------------------------------------------------ metrics

    def score(self, prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict:
        return autopet_metrics(prediction, truth, spacing).as_dict()

    def selection_score(self, summary: dict[str, float]) -> float:
        # mean Dice; minus FPV in litres as a tie-breaker when no validation study has lesions
        if "dice" in summary:
            return summary["dice"]
        return -summary.get("fpv_ml", 0.0) / 1000.0

    def mean_note(self, scored: Sequence[dict]) -> str:
        with_lesions = sum(row["dice"] is not None for row in scored)
        return f"dice, fnv_ml over the {with_lesions} with lesions"

    def case_group(self, case_id: str) -> str | None:
        # FDG and PSMA are reported apart when the case ids carry the autoPET III/IV tracer prefix
        return case_tracer(case_id)

    # ------------------------------------------------------------------------------ phantoms

    def phantom_outputs(self, out_dir: Path) -> list[Path]:
        return [out_dir / AUTOPET_FOLDER, out_dir / AUTOPET_METADATA_CSV]

    def write_phantoms(self, out_dir: Path, root: Path, n: int, seed: int, shape: tuple[int, int, int]) -> None:
        from ..data.phantoms.autopet import write_autopet_phantoms

        write_autopet_phantoms(out_dir, root, n, seed, shape)


AUTOPET = register_task(AutoPETTask())
