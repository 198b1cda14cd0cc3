"""autoPET III/IV (FDG and PSMA PET/CT) in nnU-Net's raw layout, as released for the autoPET III and IV challenges.

Layout (the folder ``PSMA-FDG-PET-CT-Lesions[_v2]/`` or any folder holding it directly):
``imagesTr/<case>_0000.nii.gz`` (CT in HU, resampled to the PET grid), ``imagesTr/<case>_0001.nii.gz`` (PET in
SUV), ``labelsTr/<case>.nii.gz`` (lesion mask 0/1 on the PET grid), ``dataset.json`` (``channel_names``
``0`` CT, ``1`` PET) and, optionally, ``splits_final.json``: nnU-Net's folds, a list of
``{"train": [case ids], "val": [case ids]}``.

Case ids are ``<tracer>_<patient>_<date>`` (``fdg_3c6e4f2a1b_05-02-2002``, ``psma_95b833d46f153cd2_2018-04-16``):
the tracer (``fdg`` or ``psma``) is a row column (``tracer``), and the patient groups the folds. With
``splits_final.json`` its folds are used exactly (train = its ``train``, validation = its ``val``) and
``num_folds`` must equal their number: a mismatch is an error rather than a silent fallback, because results
on other folds are not comparable with published ones. Without it the folds are patient-grouped and stratified
by tracer (``mirror_unet_hf.data.splits``). Metrics, preprocessing and model-card labels are AutoPET's;
``evaluate`` adds ``mean fdg`` and ``mean psma`` rows.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..data.constants import AUTOPET_LABEL_NAMES, AUTOPET_TRACERS
from ..data.nifti_io import (
    grid_of,
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
from ..files import NIFTI_SUFFIXES, nifti_stem
from .autopet import AutoPETTask, case_tracer
from .base import StudyFiles
from .registry import register_task

AUTOPET3_FOLDER = "PSMA-FDG-PET-CT-Lesions"
AUTOPET3_CHANNELS = {"0000": "ct", "0001": "pet"}  # nnU-Net channel suffix -> modality
IMAGES, LABELS = "imagesTr", "labelsTr"
MANIFEST, SPLITS_FILE = "dataset.json", "splits_final.json"
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_EXPECTED_FILES = "imagesTr/<case>_0000.nii.gz (CT), imagesTr/<case>_0001.nii.gz (PET), labelsTr/<case>.nii.gz"


def case_patient(case_id: str) -> str:
    """The patient of an autoPET III/IV case id: what lies between the tracer and the date
    (``3c6e4f2a1b`` of ``fdg_3c6e4f2a1b_05-02-2002``); the case id itself when it has no such parts."""
    parts = case_id.split("_")
    if len(parts) >= 3:
        return "_".join(parts[1:-1])
    return parts[1] if len(parts) == 2 and parts[1] else case_id


def _nifti_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if nifti_stem(p.name) and not p.name.startswith(".") and p.is_file())


def _holds_layout(folder: Path) -> bool:
    images = folder / IMAGES
    if not images.is_dir():
        return False
    for path in images.iterdir():
        match = _CHANNEL_FILE.match(nifti_stem(path.name) or "")
        if match and match["channel"] in AUTOPET3_CHANNELS:
            return True
    return False


def _check_manifest(path: Path) -> None:
    """``dataset.json``, when present, must name the channels in the order this task reads them."""
    if not path.is_file():
        return
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserInputError(f"file {str(path)!r}: not readable JSON ({error})") from None
    if not isinstance(description, dict):
        raise UserInputError(f"file {str(path)!r}: expected a JSON object with channel_names")
    channels = description.get("channel_names", description.get("modality"))
    if isinstance(channels, dict):
        found = {str(key): re.sub(r"[^a-z]", "", str(value).lower()) for key, value in channels.items()}
        if found != {"0": "ct", "1": "pet"}:
            raise UserInputError(
                f"file {str(path)!r}: channel_names {channels} do not match the autoPET III/IV channels; "
                "expected {'0': 'CT', '1': 'PET'}"
            )
    ending = description.get("file_ending")
    if ending is not None and ending not in NIFTI_SUFFIXES:
        raise UserInputError(f"file {str(path)!r}: file_ending {ending!r}; expected .nii.gz or .nii")


def _grouped_images(root: Path) -> dict[str, dict[str, list[Path]]]:
    """``case -> channel -> files`` of ``imagesTr/`` (channel ``""`` for a name without ``_<4 digits>``)."""
    cases: dict[str, dict[str, list[Path]]] = {}
    for path in _nifti_files(root / IMAGES):
        stem = nifti_stem(path.name)
        match = _CHANNEL_FILE.match(stem)
        case, channel = (match["case"], match["channel"]) if match else (stem, "")
        cases.setdefault(case, {}).setdefault(channel, []).append(path)
    return cases


def _layout_problem(case: str, channels: dict[str, list[Path]], labels: list[Path]) -> str | None:
    """What makes a case's files ambiguous (two files for one channel, an unknown channel), or None."""
    for channel, paths in sorted(channels.items()):
        shown = f"{IMAGES}/{paths[0].name}"
        if channel not in AUTOPET3_CHANNELS:
            return f"{where(case, shown)}: not a channel of this dataset; expected {_EXPECTED_FILES}"
        if len(paths) > 1:
            names = " and ".join(f"{IMAGES}/{p.name}" for p in paths)
            return f"study {case!r}: {names} are the same case and channel; expected one file each (duplicate case id)"
    if len(labels) > 1:
        names = " and ".join(f"{LABELS}/{p.name}" for p in labels)
        return f"study {case!r}: {names} are the same case; expected one label each (duplicate case id)"
    return None


def read_splits(path: Path) -> list[tuple[list[str], list[str]]]:
    """``(train, val)`` case ids of every fold of an nnU-Net ``splits_final.json``; a malformed file is a
    ``UserInputError``."""
    try:
        folds = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserInputError(f"file {str(path)!r}: not readable JSON ({error})") from None
    expected = 'a list of folds, each {"train": [case ids], "val": [case ids]}'
    if not isinstance(folds, list) or not folds:
        raise UserInputError(f"file {str(path)!r}: expected {expected}")
    parsed = []
    for index, fold in enumerate(folds):
        sides = [fold.get(side) if isinstance(fold, dict) else None for side in ("train", "val")]
        if not all(isinstance(side, list) and all(isinstance(c, str) for c in side) for side in sides):
            raise UserInputError(
                f"file {str(path)!r}: fold {index} is not {{'train': [...], 'val': [...]}}; expected {expected}"
            )
        parsed.append((sides[0], sides[1]))
    return parsed


def split_problems(folds: list[tuple[list[str], list[str]]], known: set[str], path: Path) -> dict[str, str]:
    """``case -> message`` for each case a split names wrongly: not in the folder, listed twice on one side,
    or on both sides of a fold."""
    problems: dict[str, str] = {}
    for index, (train, val) in enumerate(folds):
        for side, cases in (("train", train), ("val", val)):
            seen: set[str] = set()
            for case in cases:
                if case not in known:
                    problems.setdefault(
                        case,
                        f"file {str(path)!r}: fold {index} {side} names case {case!r}, "
                        f"which is not in {IMAGES}/ ({len(known)} cases found)",
                    )
                elif case in seen:
                    problems.setdefault(
                        case, f"file {str(path)!r}: fold {index} {side} lists case {case!r} twice (duplicate case id)"
                    )
                seen.add(case)
        for case in sorted(set(train) & set(val)):
            problems.setdefault(
                case,
                f"file {str(path)!r}: fold {index} has case {case!r} in both train and val; "
                "expected each case on one side",
            )
    return problems


class AutoPET3Task(AutoPETTask):
    name = "autopet3"
    aliases = ("autopetiii", "autopetiv", "autopet4", "psmafdgpetctlesions")
    title = "autoPET III/IV (FDG and PSMA PET/CT)"
    contents = "autoPET III/IV studies"
    description = "autoPET III/IV FDG and PSMA PET/CT in nnU-Net's layout: CT, PET (SUV) and lesion mask per case."
    folder = AUTOPET3_FOLDER
    layout_hint = f"{_EXPECTED_FILES}, dataset.json"
    record_columns = ("tracer",)
    stratify_column = "tracer"
    stratum_values = AUTOPET_TRACERS
    detect_first = True  # MSD's task also claims a folder with dataset.json and imagesTr/

    # ------------------------------------------------------------------------------ layout

    def find_root(self, data_dir: Path) -> Path | None:
        named = sorted(
            p for p in data_dir.iterdir() if p.is_dir() and p.name.lower().startswith(AUTOPET3_FOLDER.lower())
        )
        return next((folder for folder in (data_dir, *named) if _holds_layout(folder)), None)

    def metadata_files(self, root: Path) -> list[Path]:
        return [root / MANIFEST] if (root / MANIFEST).is_file() else []

    def discover(self, root: Path) -> list[StudyFiles]:
        _check_manifest(root / MANIFEST)
        images = _grouped_images(root)
        labels: dict[str, list[Path]] = {}
        for path in _nifti_files(root / LABELS):
            labels.setdefault(nifti_stem(path.name), []).append(path)
        studies = []
        for case in sorted(set(images) | set(labels)):
            channels, case_labels = images.get(case, {}), labels.get(case, [])
            ending = next((p.name[len(nifti_stem(p.name)) :] for paths in channels.values() for p in paths), ".nii.gz")
            files = {
                modality: (channels.get(channel) or [root / IMAGES / f"{case}_{channel}{ending}"])[0]
                for channel, modality in AUTOPET3_CHANNELS.items()
            }
            files["label"] = (case_labels or [root / LABELS / f"{case}{ending}"])[0]
            problem = _layout_problem(case, channels, case_labels)
            studies.append(StudyFiles(case, case_patient(case), case, files, problem=problem))
        return studies

    def record_values(self, study: StudyFiles) -> dict[str, str | None]:
        return {"tracer": case_tracer(study.case_id)}

    def read_study(self, study: StudyFiles) -> dict:
        tracer = case_tracer(study.case_id)
        if tracer is None:
            pet_name = f"{IMAGES}/{study.files['pet'].name}"
            raise UserInputError(
                f"{where(study.name, pet_name)}: case id has no tracer prefix; expected "
                f"<tracer>_<patient>_<date> with tracer {' or '.join(AUTOPET_TRACERS)} (fdg_3c6e4f2a1b_05-02-2002)"
            )
        record = {"case_id": study.case_id, "patient_id": study.patient_id, "tracer": tracer}
        grids, names = {}, {}
        for role in ("ct", "pet", "label"):
            path = study.files[role]
            names[role] = f"{path.parent.name}/{path.name}"
            if not path.is_file():
                raise UserInputError(
                    f"{where(study.name, names[role])}: file not found; every case needs {_EXPECTED_FILES}"
                )
            data = read_bytes(path, study.name, names[role])
            image = nifti_from_bytes(data, study.name, names[role])
            array = require_3d(read_array(image, study.name, names[role]), study.name, names[role])
            if role == "label":
                require_label_values(array, len(AUTOPET_LABEL_NAMES), study.name, names[role])
            else:
                require_finite(array, study.name, names[role])
            grids[role] = grid_of(image)
            record[role] = {"bytes": data, "path": None}  # path None: a local path would make datasets drop the bytes
        for role in ("ct", "label"):
            if not same_grid(grids[role], grids["pet"]):
                raise UserInputError(
                    f"{where(study.name, names[role])}: grid (shape {grids[role].shape}, spacing "
                    f"{tuple(round(s, 4) for s in grids[role].spacing)}) disagrees with {names['pet']} (shape "
                    f"{grids['pet'].shape}); expected every channel and the label on the PET grid"
                )
        record["spacing"] = list(grids["pet"].spacing)
        record["shape"] = list(grids["pet"].shape)
        return record

    def fixed_split(
        self, root: Path, case_ids: Sequence[str], fold: int, num_folds: int, skip_bad: bool = False
    ) -> tuple[list[str], list[str]] | None:
        path = root / SPLITS_FILE
        if not path.is_file():
            return None
        folds = read_splits(path)
        if len(folds) != num_folds:
            raise UserInputError(
                f"file {str(path)!r}: defines {len(folds)} folds but num_folds is {num_folds}; pass num_folds="
                f"{len(folds)} to use these folds (or move the file away for patient-grouped folds)"
            )
        problems = split_problems(folds, set(case_ids), path)
        if problems and not skip_bad:
            raise UserInputError(next(iter(problems.values())))
        if problems:
            warnings.warn(
                f"left out {len(problems)} case(s) of {SPLITS_FILE} (skip_bad=True):\n"
                + "\n".join(f"  - {message}" for message in problems.values()),
                UserWarning,
                stacklevel=3,
            )
        train, val = ([case for case in side if case not in problems] for side in folds[fold])
        unused = sorted(set(case_ids) - set(train) - set(val))
        if unused:
            warnings.warn(
                f"{len(unused)} case(s) are in neither train nor val of fold {fold} of {path} and are left "
                f"out (e.g. {unused[0]})",
                UserWarning,
                stacklevel=3,
            )
        return list(dict.fromkeys(train)), list(dict.fromkeys(val))

    def prediction_input(self, study: StudyFiles) -> dict[str, Path]:
        return {modality: study.files[modality] for modality in AUTOPET3_CHANNELS.values()}

    def ground_truth(self, folder: Path) -> dict[str, Path] | None:
        from ..evaluation import flat_niftis

        root = self.find_root(folder)
        return None if root is None or not (root / LABELS).is_dir() else flat_niftis(root / LABELS)

    def modality_file_names(self, modality: str) -> tuple[str, ...]:
        return ()  # no study folders: a case's images lie among the others' in imagesTr/

    # ------------------------------------------------------------------------------ Hub dataset repos

    def repo_layout(self, names: Sequence[str]) -> dict | None:
        return None  # not yet pushed as a dataset repo of its own layout

    def repo_study_rows(self, names: set[str]) -> list[dict]:
        return []

    # ------------------------------------------------------------------------------ phantoms

    def phantom_outputs(self, out_dir: Path) -> list[Path]:
        return [out_dir / AUTOPET3_FOLDER]

    def write_phantoms(self, out_dir: Path, root: Path, n: int, seed: int, shape: tuple[int, int, int]) -> None:
        from ..data.phantoms.autopet3 import write_autopet3_phantoms

        write_autopet3_phantoms(root, n, seed, shape)


AUTOPET3 = register_task(AutoPET3Task())
