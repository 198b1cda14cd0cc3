"""MSD Task01 BrainTumour: multi-parametric MRI (FLAIR, T1w, T1Gd, T2w) with glioma sub-region labels.

Layout: ``Task01_BrainTumour/{dataset.json, imagesTr/, labelsTr/}``; ``dataset.json`` lists the cases; each
image is 4D channel-last (FLAIR, T1w, T1Gd, T2w) and is stored in a dataset row as four 3D columns. Case
id: the image name without ``.nii.gz`` (``BRATS_001``); one study per patient. Metrics: Dice and HD95 of
the BraTS regions WT {1,2,3}, TC {2,3}, ET {3}.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..data.constants import BRAIN_TUMOUR_FOLDER, BRAIN_TUMOUR_LABEL_NAMES, BRAIN_TUMOUR_MODALITIES
from ..data.nifti_io import (
    encode_nifti,
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
from ..files import NIFTI_SUFFIXES
from ..metrics import brats_metrics
from .base import StudyFiles, TaskSpec
from .registry import register_task


def _read_manifest(manifest: Path) -> list:
    """The ``training`` list of ``dataset.json``, after checking its channel order."""
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
    return training


def _channel_images(image: Any, array: np.ndarray) -> list:
    """One 3D image per channel, keeping integer storage when it is exact, otherwise float32."""
    stored = image.get_data_dtype()
    slope, inter = image.header.get_slope_inter()
    keep = np.issubdtype(stored, np.integer) and slope in (None, 1.0) and inter in (None, 0.0)
    channels = []
    for channel in range(array.shape[3]):
        header = image.header.copy()
        header.set_data_dtype(stored if keep else np.float32)
        volume = array[..., channel].astype(stored) if keep else np.ascontiguousarray(array[..., channel])
        channels.append(type(image)(volume, image.affine, header))
    return channels


class BrainTumourTask(TaskSpec):
    name = "brain_tumour"
    aliases = ("braintumor", "msdbraintumour", "task01braintumour")
    title = "MSD Task01 BrainTumour"
    contents = "MSD BrainTumour dataset"
    description = "MSD Task01 BrainTumour: FLAIR, T1w, T1Gd, T2w and tumour labels."
    folder = BRAIN_TUMOUR_FOLDER
    layout_hint = f"{BRAIN_TUMOUR_FOLDER}/dataset.json with imagesTr/ and labelsTr/"
    modalities = BRAIN_TUMOUR_MODALITIES
    label_names = BRAIN_TUMOUR_LABEL_NAMES
    domain, domain_tag = "MRI", "mri"
    segmentation_name = "3D brain tumour segmentation"
    metric_labels = {
        "dice_wt": ("Dice, whole tumour", ""),
        "dice_tc": ("Dice, tumour core", ""),
        "dice_et": ("Dice, enhancing tumour", ""),
        "hd95_wt": ("HD95, whole tumour", "mm"),
        "hd95_tc": ("HD95, tumour core", "mm"),
        "hd95_et": ("HD95, enhancing tumour", "mm"),
    }
    # the paper's two branches, FLAIR and T1Gd, on the T1Gd grid at 1 mm, z-scored
    preprocessing_modalities = ("flair", "t1gd")
    reference_modality = "t1gd"
    target_spacing = (1.0, 1.0, 1.0)
    intensity_windows = {}
    metric_columns = ("dice_wt", "dice_tc", "dice_et", "hd95_wt", "hd95_tc", "hd95_et")
    validation_columns = metric_columns
    phantom_shape = (64, 80, 64)

    # ------------------------------------------------------------------------------ layout

    def find_root(self, data_dir: Path) -> Path | None:
        if (data_dir / "dataset.json").is_file():
            return data_dir
        if (data_dir / BRAIN_TUMOUR_FOLDER / "dataset.json").is_file():
            return data_dir / BRAIN_TUMOUR_FOLDER
        return None

    def metadata_files(self, root: Path) -> list[Path]:
        return [root / "dataset.json"] if (root / "dataset.json").is_file() else []

    def discover(self, root: Path) -> list[StudyFiles]:
        manifest = root / "dataset.json"
        studies = []
        for position, entry in enumerate(_read_manifest(manifest)):
            if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("image", "label")):
                raise UserInputError(
                    f"file {str(manifest)!r}: training entry {position} needs 'image' and 'label' paths, got {entry!r}"
                )
            case = re.sub(r"\.nii(\.gz)?$", "", Path(entry["image"]).name)
            files = {"image": (root / entry["image"]).resolve(), "label": (root / entry["label"]).resolve()}
            studies.append(StudyFiles(case_id=case, patient_id=case, name=case, files=files))
        return studies

    def read_study(self, study: StudyFiles) -> dict:
        image_path, label_path = study.files["image"], study.files["label"]
        image_name = f"{image_path.parent.name}/{image_path.name}"
        label_name = f"{label_path.parent.name}/{label_path.name}"
        image = nifti_from_bytes(read_bytes(image_path, study.name, image_name), study.name, image_name)
        array = read_array(image, study.name, image_name)
        if array.ndim != 4 or array.shape[3] != len(BRAIN_TUMOUR_MODALITIES):
            raise UserInputError(
                f"{where(study.name, image_name)}: shape {tuple(array.shape)}; expected a 4D channel-last image "
                f"with {len(BRAIN_TUMOUR_MODALITIES)} channels ({', '.join(BRAIN_TUMOUR_MODALITIES)})"
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
        for modality, channel in zip(BRAIN_TUMOUR_MODALITIES, _channel_images(image, array), strict=True):
            record[modality] = {"bytes": encode_nifti(channel), "path": None}
        record["label"] = {"bytes": label_bytes, "path": None}
        record["spacing"] = list(grid.spacing)
        record["shape"] = list(grid.shape)
        return record

    def prediction_input(self, study: StudyFiles) -> Path:
        return study.files["image"]

    def ground_truth(self, folder: Path) -> dict[str, Path] | None:
        from ..evaluation import flat_niftis

        for labels_dir in (folder / "labelsTr", folder / BRAIN_TUMOUR_FOLDER / "labelsTr"):
            if labels_dir.is_dir():
                return flat_niftis(labels_dir)
        return None

    def split_channels(self, image: Any, modalities: Sequence[str], path: Path) -> dict | None:
        if len(image.shape) != 4 or image.shape[3] != len(BRAIN_TUMOUR_MODALITIES):
            raise UserInputError(
                f"file {path}: a single-file study must be an MSD 4D image with {len(BRAIN_TUMOUR_MODALITIES)} "
                f"channels ({', '.join(BRAIN_TUMOUR_MODALITIES)}); got shape {image.shape}"
            )
        data = np.asanyarray(image.dataobj)
        inputs = {}
        for name in modalities:
            if name not in BRAIN_TUMOUR_MODALITIES:
                raise UserInputError(f"the model reads modality {name!r}, which an MSD BrainTumour image does not have")
            channel = data[..., BRAIN_TUMOUR_MODALITIES.index(name)].astype(np.float32)
            inputs[name] = nib.Nifti1Image(channel, image.affine)
        return inputs

    # ------------------------------------------------------------------------------ Hub dataset repos

    def repo_layout(self, names: Sequence[str]) -> dict | None:
        labels = sorted(n for n in names if "labelsTr/" in n and n.endswith(NIFTI_SUFFIXES))
        if not labels or not any(n.endswith("dataset.json") for n in names):
            return None
        summary = (
            "Medical Segmentation Decathlon layout: `dataset.json`, `imagesTr/` (4D images, channel last) and "
            f"`labelsTr/` with {len(labels)} labelled cases"
        )
        return {"summary": summary, "studies": len(labels), "example": labels[0]}

    def repo_study_rows(self, names: set[str]) -> list[dict]:
        rows = []
        for label in sorted(n for n in names if n.split("/")[-2:-1] == ["labelsTr"] and n.endswith(NIFTI_SUFFIXES)):
            image = label.replace("labelsTr/", "imagesTr/")
            if image in names:
                case = label.rsplit("/", 1)[-1].split(".nii")[0]
                rows.append({"case_id": case, "image_file_name": image, "label_file_name": label})
        return rows

    # ------------------------------------------------------------------------------ metrics

    def score(self, prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict:
        return brats_metrics(prediction, truth, spacing).as_dict()

    def selection_score(self, summary: dict[str, float]) -> float:
        # mean of the region Dice scores that are defined
        dices = [summary[k] for k in ("dice_wt", "dice_tc", "dice_et") if k in summary]
        return float(np.mean(dices)) if dices else 0.0

    def mean_note(self, scored: Sequence[dict]) -> str:
        return "hd95 over the studies where it is defined"

    # ------------------------------------------------------------------------------ phantoms

    def write_phantoms(self, out_dir: Path, root: Path, n: int, seed: int, shape: tuple[int, int, int]) -> None:
        from ..data.phantoms.brain_tumour import write_brain_tumour_phantoms

        write_brain_tumour_phantoms(root, n, seed, shape)


BRAIN_TUMOUR = register_task(BrainTumourTask())
