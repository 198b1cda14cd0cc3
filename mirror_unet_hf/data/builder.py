"""Hugging Face ``datasets`` builder for AutoPET and MSD BrainTumour, and ``load_mirror_dataset``.

On-disk layouts (``data_dir`` may point at the dataset folder itself or at its parent):

- AutoPET: ``FDG-PET-CT-Lesions/<patient>/<study>/{CTres,SUV,SEG}.nii.gz``, optionally with the TCIA
  metadata CSV (``Clinical Metadata FDG PET_CT Lesions.csv``: ``Subject ID``, ``Study Date``,
  ``diagnosis``) inside the folder or next to it. Without it every diagnosis is ``"unknown"``.
- BrainTumour: ``Task01_BrainTumour/{dataset.json, imagesTr/, labelsTr/}``; ``dataset.json`` lists the
  cases; each image is 4D channel-last (FLAIR, T1w, T1Gd, T2w) and is stored as four 3D columns.

The builder writes ONE split, ``"studies"``: every study with its NIfTI bytes embedded (``datasets.Nifti``
columns decode without the raw folder). ``load_mirror_dataset`` cuts it into ``train``/``validation``
with the patient-grouped, diagnosis-stratified k-fold rule of ``mirror_unet_hf.data.splits``, so every
fold reuses one cache. The cache id includes a fingerprint of the raw files' names, sizes and
modification times: editing, adding or removing a study rebuilds, a second identical call reads nothing.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import datasets
import numpy as np
from datasets.exceptions import DatasetGenerationError

from ..errors import UserInputError
from .constants import (
    AUTOPET_FILES,
    AUTOPET_FOLDER,
    AUTOPET_LABEL_FILE,
    AUTOPET_LABEL_NAMES,
    BRAIN_TUMOUR_FOLDER,
    BRAIN_TUMOUR_LABEL_NAMES,
    BRAIN_TUMOUR_MODALITIES,
    DATASET_NAMES,
    UNKNOWN_DIAGNOSIS,
    diagnosis_from_metadata,
)
from .nifti_io import (
    encode_nifti,
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
from .splits import check_fold, split_indices

VERSION = datasets.Version("1.0.0")
STUDIES_SPLIT = "studies"
_SKIPPED_MARKER = "Skipped studies (skip_bad=True):"


@dataclass
class StudyFiles:
    """One study found on disk. ``files`` maps a role (modality name, ``"image"``, ``"label"``) to its path."""

    case_id: str
    patient_id: str
    name: str  # how messages name the study: its folder relative to the dataset root
    files: dict[str, Path] = field(default_factory=dict)
    diagnosis: str | None = None
    problem: str | None = None  # a layout problem found while listing (reported like a bad file)


# ------------------------------------------------------------------------------------------ discovery


def dataset_name(name: str) -> str:
    """Normalise a dataset name (``BrainTumour``, ``brain-tumour`` ... ) or raise ``UserInputError``."""
    key = re.sub(r"[^a-z]", "", str(name).lower())
    aliases = {"autopet": "autopet", "braintumour": "brain_tumour", "braintumor": "brain_tumour"}
    if key not in aliases:
        raise UserInputError(f"unknown dataset {name!r}; expected one of: {', '.join(DATASET_NAMES)}")
    return aliases[key]


def find_dataset_root(name: str, data_dir: str | os.PathLike) -> Path:
    """The dataset folder (``FDG-PET-CT-Lesions`` / ``Task01_BrainTumour``) given it or its parent."""
    name = dataset_name(name)
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise UserInputError(f"data_dir {str(data_dir)!r} does not exist or is not a folder")
    if name == "autopet":
        if (data_dir / AUTOPET_FOLDER).is_dir():
            return data_dir / AUTOPET_FOLDER
        if data_dir.name == AUTOPET_FOLDER or any(data_dir.glob(f"*/*/{AUTOPET_FILES['pet']}")):
            return data_dir
        raise UserInputError(
            f"data_dir {str(data_dir)!r} holds no AutoPET studies; expected "
            f"{AUTOPET_FOLDER}/<patient>/<study>/{{CTres,SUV,SEG}}.nii.gz in it or below it"
        )
    if (data_dir / "dataset.json").is_file():
        return data_dir
    if (data_dir / BRAIN_TUMOUR_FOLDER / "dataset.json").is_file():
        return data_dir / BRAIN_TUMOUR_FOLDER
    raise UserInputError(
        f"data_dir {str(data_dir)!r} holds no MSD BrainTumour dataset; expected "
        f"{BRAIN_TUMOUR_FOLDER}/dataset.json with imagesTr/ and labelsTr/ in it or below it"
    )


def discover_studies(name: str, root: Path) -> list[StudyFiles]:
    """List the studies of a dataset folder (reads no image). Raises ``UserInputError`` when there are none."""
    name = dataset_name(name)
    studies = _autopet_studies(root) if name == "autopet" else _brain_tumour_studies(root)
    if not studies:
        raise UserInputError(f"no studies found in {str(root)!r}; see the expected layout in mirror_unet_hf.data.builder")
    seen: dict[str, str] = {}
    for study in studies:
        if study.case_id in seen:
            raise UserInputError(f"studies {seen[study.case_id]!r} and {study.name!r} map to the same case id {study.case_id!r}")
        seen[study.case_id] = study.name
    return studies


def source_fingerprint(root: Path, studies: list[StudyFiles]) -> str:
    """Hash of the names, sizes and modification times of every file the build would read."""
    paths = sorted({path for study in studies for path in study.files.values()} | set(_metadata_files(root)))
    digest = hashlib.sha256()
    for study in studies:
        digest.update(f"{study.case_id}|{study.problem}\n".encode())
    for path in paths:
        try:
            stat = path.stat()
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}|missing\n".encode())
    return digest.hexdigest()[:16]


def _autopet_studies(root: Path) -> list[StudyFiles]:
    by_study, by_patient = _read_autopet_metadata(root)
    studies = []
    for patient in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        study_dirs = sorted(s for s in patient.iterdir() if s.is_dir() and not s.name.startswith("."))
        if not study_dirs:
            studies.append(
                StudyFiles(
                    patient.name, patient.name, patient.name,
                    problem=f"study {patient.name!r}: patient folder has no study folders; expected "
                    f"{patient.name}/<study>/{{CTres,SUV,SEG}}.nii.gz",
                )
            )
            continue
        for study in study_dirs:
            files = {modality: study / filename for modality, filename in AUTOPET_FILES.items()}
            files["label"] = study / AUTOPET_LABEL_FILE
            date = _folder_date(study.name)
            diagnosis = by_study.get((patient.name, date))
            if diagnosis is None and len(by_patient.get(patient.name, ())) == 1:
                diagnosis = next(iter(by_patient[patient.name]))
            studies.append(
                StudyFiles(
                    case_id=f"{patient.name}_{study.name}",  # as mirror_unet_hf.evaluation names AutoPET cases
                    patient_id=patient.name,
                    name=f"{patient.name}/{study.name}",
                    files=files,
                    diagnosis=diagnosis or UNKNOWN_DIAGNOSIS,
                )
            )
    return studies


def _metadata_files(root: Path) -> list[Path]:
    """Non-image files a build reads: MSD's dataset.json, or any CSV in or next to the AutoPET folder."""
    if (root / "dataset.json").is_file():
        return [root / "dataset.json"]
    return sorted(root.glob("*.csv")) + sorted(root.parent.glob("*.csv"))


def _read_autopet_metadata(root: Path) -> tuple[dict, dict]:
    """``{(patient, study date): diagnosis}`` and ``{patient: {diagnoses}}`` from any metadata CSV found."""
    by_study: dict[tuple[str, datetime.date | None], str] = {}
    by_patient: dict[str, set[str]] = {}
    for path in _metadata_files(root):
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


def _brain_tumour_studies(root: Path) -> list[StudyFiles]:
    manifest = root / "dataset.json"
    try:
        description = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserInputError(f"file {str(manifest)!r}: not readable JSON ({error})") from None
    modality = description.get("modality") if isinstance(description, dict) else None
    if isinstance(modality, dict):
        found = [re.sub(r"[^a-z0-9]", "", str(modality.get(str(i), "")).lower()) for i in range(len(modality))]
        if found != list(BRAIN_TUMOUR_MODALITIES):
            raise UserInputError(
                f"file {str(manifest)!r}: modality {modality} does not match the MSD channel order "
                f"{', '.join(BRAIN_TUMOUR_MODALITIES)}"
            )
    training = description.get("training") if isinstance(description, dict) else None
    if not isinstance(training, list):
        raise UserInputError(f"file {str(manifest)!r}: expected a 'training' list of {{image, label}} entries")
    studies = []
    for position, entry in enumerate(training):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not isinstance(entry.get("label"), str):
            raise UserInputError(f"file {str(manifest)!r}: training entry {position} needs 'image' and 'label' paths, got {entry!r}")
        case_id = re.sub(r"\.nii(\.gz)?$", "", Path(entry["image"]).name)
        studies.append(
            StudyFiles(
                case_id=case_id,
                patient_id=case_id,
                name=case_id,
                files={"image": (root / entry["image"]).resolve(), "label": (root / entry["label"]).resolve()},
            )
        )
    return studies


# -------------------------------------------------------------------------------------------- reading


def read_study(name: str, study: StudyFiles) -> dict:
    """Read, check and encode one study into a dataset record; ``UserInputError`` names the study and file."""
    if study.problem:
        raise UserInputError(study.problem)
    return _read_autopet(study) if dataset_name(name) == "autopet" else _read_brain_tumour(study)


def _read_autopet(study: StudyFiles) -> dict:
    record = {"case_id": study.case_id, "patient_id": study.patient_id, "diagnosis": study.diagnosis or UNKNOWN_DIAGNOSIS}
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
        raise UserInputError(f"{where(study.name, AUTOPET_FILES['ct'])}: does not overlap {AUTOPET_FILES['pet']} in world space")
    record["spacing"] = list(grids["pet"].spacing)
    record["shape"] = list(grids["pet"].shape)
    return record


def _read_brain_tumour(study: StudyFiles) -> dict:
    image_path, label_path = study.files["image"], study.files["label"]
    image_name = f"{image_path.parent.name}/{image_path.name}"
    label_name = f"{label_path.parent.name}/{label_path.name}"
    image = nifti_from_bytes(read_bytes(image_path, study.name, image_name), study.name, image_name)
    array = read_array(image, study.name, image_name)
    if array.ndim != 4 or array.shape[3] != len(BRAIN_TUMOUR_MODALITIES):
        raise UserInputError(
            f"{where(study.name, image_name)}: shape {tuple(array.shape)}; expected a 4D channel-last image with "
            f"{len(BRAIN_TUMOUR_MODALITIES)} channels ({', '.join(BRAIN_TUMOUR_MODALITIES)})"
        )
    require_finite(array, study.name, image_name)
    label_bytes = read_bytes(label_path, study.name, label_name)
    label = nifti_from_bytes(label_bytes, study.name, label_name)
    label_array = require_3d(read_array(label, study.name, label_name), study.name, label_name)
    require_label_values(label_array, len(BRAIN_TUMOUR_LABEL_NAMES), study.name, label_name)
    grid = grid_of(image)
    if not same_grid(grid_of(label), grid):
        raise UserInputError(
            f"{where(study.name, label_name)}: grid (shape {grid_of(label).shape}) disagrees with {image_name} "
            f"(shape {grid.shape}); expected the same shape and affine"
        )
    record = {"case_id": study.case_id, "patient_id": study.patient_id}
    # keep integer storage when it is exact, otherwise float32 (scaling already applied)
    stored = image.get_data_dtype()
    slope, inter = image.header.get_slope_inter()
    keep = np.issubdtype(stored, np.integer) and slope in (None, 1.0) and inter in (None, 0.0)
    for channel, modality in enumerate(BRAIN_TUMOUR_MODALITIES):
        header = image.header.copy()
        header.set_data_dtype(stored if keep else np.float32)
        volume = array[..., channel].astype(stored) if keep else np.ascontiguousarray(array[..., channel])
        record[modality] = {"bytes": encode_nifti(type(image)(volume, image.affine, header)), "path": None}
    record["label"] = {"bytes": label_bytes, "path": None}
    record["spacing"] = list(grid.spacing)
    record["shape"] = list(grid.shape)
    return record


# -------------------------------------------------------------------------------------------- builder


def dataset_features(name: str) -> datasets.Features:
    """Columns of the ``studies`` split (and of ``load_mirror_dataset``'s splits)."""
    name = dataset_name(name)
    columns = {"case_id": datasets.Value("string"), "patient_id": datasets.Value("string")}
    if name == "autopet":
        columns["diagnosis"] = datasets.Value("string")
        modalities = tuple(AUTOPET_FILES)
    else:
        modalities = BRAIN_TUMOUR_MODALITIES
    for modality in modalities:
        columns[modality] = datasets.Nifti()
    columns["label"] = datasets.Nifti()
    columns["spacing"] = datasets.List(datasets.Value("float64"), length=3)
    columns["shape"] = datasets.List(datasets.Value("int64"), length=3)
    return datasets.Features(columns)


@dataclass
class MirrorDatasetConfig(datasets.BuilderConfig):
    """``skip_bad``: skip and report unreadable studies instead of failing; ``source_fingerprint``: cache key of the raw files."""

    skip_bad: bool = False
    source_fingerprint: str = ""


class MirrorDatasetBuilder(datasets.GeneratorBasedBuilder):
    """AutoPET (``config_name="autopet"``) or MSD BrainTumour (``"brain_tumour"``) from a local folder.

    ``MirrorDatasetBuilder(config_name="autopet", data_dir=..., cache_dir=...)``, then
    ``download_and_prepare()`` and ``as_dataset("studies")``. Most users want ``load_mirror_dataset``.
    """

    BUILDER_CONFIG_CLASS = MirrorDatasetConfig
    BUILDER_CONFIGS: ClassVar[list[MirrorDatasetConfig]] = [
        MirrorDatasetConfig(name="autopet", version=VERSION, description="AutoPET FDG-PET/CT: CTres, SUV and lesion mask per study."),
        MirrorDatasetConfig(name="brain_tumour", version=VERSION, description="MSD Task01 BrainTumour: FLAIR, T1w, T1Gd, T2w and tumour labels."),
    ]
    DEFAULT_CONFIG_NAME = "autopet"
    # Rows carry whole volumes: flush often so memory stays at a few studies.
    DEFAULT_WRITER_BATCH_SIZE = 2

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(description=self.config.description, features=dataset_features(self.config.name))

    def _split_generators(self, dl_manager):
        if not self.config.data_dir:
            raise UserInputError("MirrorDatasetBuilder needs data_dir (the dataset folder or its parent)")
        root = find_dataset_root(self.config.name, self.config.data_dir)
        return [datasets.SplitGenerator(name=STUDIES_SPLIT, gen_kwargs={"studies": discover_studies(self.config.name, root)})]

    def _generate_examples(self, studies: list[StudyFiles]):
        failures = []
        for study in studies:
            try:
                record = read_study(self.config.name, study)
            except UserInputError as error:
                if not self.config.skip_bad:
                    raise
                failures.append(str(error))
                continue
            yield study.case_id, record
        self.skipped_studies = failures
        if failures and len(failures) == len(studies):
            raise UserInputError(f"all {len(studies)} studies failed; first: {failures[0]}")
        if failures:
            self.info.description = f"{self.config.description}\n\n{_SKIPPED_MARKER}\n" + "\n".join(f"- {f}" for f in failures)
            warnings.warn(_skipped_message(failures, len(studies)), UserWarning, stacklevel=2)


def _skipped_message(failures: list[str], total: int) -> str:
    return f"skipped {len(failures)} of {total} studies (skip_bad=True):\n" + "\n".join(f"  - {f}" for f in failures)


def load_mirror_dataset(
    name: str,
    data_dir: str | os.PathLike,
    fold: int = 0,
    num_folds: int = 5,
    cache_dir: str | os.PathLike | None = None,
    skip_bad: bool = False,
) -> datasets.DatasetDict:
    """Load AutoPET or MSD BrainTumour as ``DatasetDict(train=..., validation=...)`` for one cross-validation fold.

    Args:
        name: ``"autopet"`` or ``"brain_tumour"``.
        data_dir: the dataset folder (``FDG-PET-CT-Lesions`` / ``Task01_BrainTumour``) or its parent.
        fold, num_folds: which of the ``num_folds`` patient-grouped folds is the validation set.
        cache_dir: datasets cache folder (default: the datasets library's own).
        skip_bad: skip unreadable studies with a warning listing each and why, instead of failing on the first.

    Rows: ``case_id``, ``patient_id``, ``diagnosis`` (AutoPET), one ``datasets.Nifti`` column per modality,
    ``label`` (Nifti), ``spacing`` (3 floats, mm) and ``shape`` (3 ints) of the reference grid.
    """
    name = dataset_name(name)
    check_fold(fold, num_folds)
    root = find_dataset_root(name, data_dir)
    studies = discover_studies(name, root)
    builder = MirrorDatasetBuilder(
        dataset_name="mirror_unet",
        config_name=name,
        data_dir=str(root.resolve()),
        cache_dir=None if cache_dir is None else str(cache_dir),
        skip_bad=bool(skip_bad),
        source_fingerprint=source_fingerprint(root, studies),
    )
    try:
        builder.download_and_prepare()
    except DatasetGenerationError as error:
        if isinstance(error.__cause__, UserInputError):
            raise error.__cause__ from None
        raise
    if not hasattr(builder, "skipped_studies") and _SKIPPED_MARKER in (builder.info.description or ""):
        skipped = builder.info.description.split(_SKIPPED_MARKER, 1)[1].strip().splitlines()
        warnings.warn(_skipped_message([s.removeprefix("- ") for s in skipped], len(studies)), UserWarning, stacklevel=2)
    table = builder.as_dataset(split=STUDIES_SPLIT)
    diagnoses = list(table["diagnosis"]) if "diagnosis" in table.column_names else None
    train, validation = split_indices(list(table["patient_id"]), diagnoses, fold, num_folds)
    if not train or not validation:
        warnings.warn(
            f"{name}: {len(set(table['patient_id']))} patient(s) for {num_folds} folds leaves the "
            f"{'training' if not train else 'validation'} split of fold {fold} empty",
            UserWarning,
            stacklevel=2,
        )
    return datasets.DatasetDict({"train": table.select(train), "validation": table.select(validation)})
