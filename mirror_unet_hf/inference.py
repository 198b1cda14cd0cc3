"""Whole-study inference: NIfTI files in, a label mask on the reference modality's grid out.

`predict_study` preprocesses exactly as training does (`mirror_unet_hf.data.preprocessing`), runs
sliding-window inference (`mirror_unet_hf.sliding_window`), and maps the result back onto the
ORIGINAL grid of the reference modality (same shape and affine as the input PET / T1Gd), together
with any branch outputs asked for and the classification head's probabilities.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from .data.nifti_io import NiftiSource, load_nifti
from .data.preprocessing import PreprocessedStudy, preprocess_study
from .errors import UserInputError
from .files import NIFTI_SUFFIXES, is_pickle_file
from .sliding_window import SlidingWindowSettings, sliding_window_predict
from .tasks import list_tasks


def load_model(model: str | Path, device: str = "cpu"):
    """Load a Mirror U-Net from a `save_pretrained` folder or a Hub id, safetensors weights only.

    Importing this package registers the classes, so no remote code runs for a local or Hub checkpoint.
    """
    from .modeling_mirror_unet import MirrorUNetModel

    path = Path(model)
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserInputError(f"model folder {path} has no config.json; expected a save_pretrained folder")
        pickled = sorted(p.name for p in path.iterdir() if is_pickle_file(p.name))
        if not (path / "model.safetensors").is_file():
            hint = (
                f" (found {', '.join(pickled)}: pickle-based weights are refused because loading them can run code)"
                if pickled
                else ""
            )
            raise UserInputError(f"model folder {path} has no model.safetensors{hint}")
    from transformers.utils import logging as hf_logging

    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one "Loading weights" bar per study is noise on a CLI
    try:
        loaded = MirrorUNetModel.from_pretrained(str(model), use_safetensors=True)
    except OSError as error:
        raise UserInputError(f"cannot load model {model!s}: {str(error).splitlines()[0]}") from None
    finally:
        if bars_were_enabled:
            hf_logging.enable_progress_bar()
    return loaded.to(device).eval()


def study_inputs(study: str | Path | Mapping[str, str | Path], modalities: list[str]) -> dict[str, NiftiSource]:
    """The modality files of one study, from the dataset layouts.

    - an AutoPET study folder: `CTres.nii.gz` → ct, `SUV.nii.gz` → pet;
    - an MSD BrainTumour 4D image `BRATS_XXX.nii.gz` (channel last: FLAIR, T1w, T1Gd, T2w), split into
      the named channels the model needs;
    - any folder holding `<modality>.nii.gz` for each modality;
    - a `{modality: file}` mapping (what `TaskSpec.prediction_input` gives for layouts such as nnU-Net's
      `imagesTr/<case>_0000.nii.gz`), of which the model's modalities are taken.
    """
    if isinstance(study, Mapping):
        return mapped_inputs(study, modalities)
    study = Path(study)
    if study.is_file() and study.name.endswith(NIFTI_SUFFIXES):
        image = load_nifti(study)
        for task in list_tasks():
            inputs = task.split_channels(image, modalities, study)
            if inputs is not None:
                return inputs
        raise UserInputError(f"file {study}: no dataset stores a whole study in one file; expected a study folder")
    if not study.is_dir():
        raise UserInputError(f"study {study} does not exist; expected an AutoPET study folder or an MSD 4D NIfTI file")
    inputs = {}
    for name in modalities:
        candidates = [study / file_name for task in list_tasks() for file_name in task.modality_file_names(name)]
        candidates += [study / f"{name}{suffix}" for suffix in NIFTI_SUFFIXES]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise UserInputError(
                f"study {study}: no file for modality {name!r}; looked for {', '.join(c.name for c in candidates)}"
            )
        inputs[name] = found
    return inputs


def mapped_inputs(files: Mapping[str, str | Path], modalities: list[str]) -> dict[str, Path]:
    """The files of ``modalities`` from a ``{modality: file}`` mapping; a missing one is a ``UserInputError``."""
    inputs = {}
    for name in modalities:
        if name not in files:
            raise UserInputError(
                f"study files {', '.join(str(p) for p in files.values())}: none for modality {name!r}; "
                f"the model reads {', '.join(modalities)}"
            )
        path = Path(files[name])
        if not path.is_file():
            raise UserInputError(f"file {path} (modality {name!r}) does not exist")
        inputs[name] = path
    return inputs


@dataclass
class StudyPrediction:
    """The result of `predict_study`, every image on the reference modality's original grid.

    Attributes:
        mask: uint8 label image in the dataset's label map (`config.final_label_values`).
        branches: extra outputs by name, as float32 images: `"<branch>"` for a reconstruction (in the
            modality's own units where it has an intensity window, e.g. HU / SUV) or the foreground
            probability of a segmentation branch; `"bottleneck_decoder"` likewise.
        classification: lesion-presence probability (`{"lesion_presence": p}`) or one probability per
            diagnosis class; None without a classification head.
        preprocessed: the network's view of the study (for viewers and debugging).
        seconds: wall time of each stage.
        run: how the network ran: resolved `precision` (`"fp32"` or `"bf16"`), CPU `workers`, `window_batch`, `windows`.
    """

    mask: nib.Nifti1Image
    branches: dict[str, nib.Nifti1Image] = field(default_factory=dict)
    classification: dict[str, float] | None = None
    preprocessed: PreprocessedStudy | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    run: dict = field(default_factory=dict)


def _to_modality_units(values: np.ndarray, window) -> np.ndarray:
    if window is None:
        return values
    low, high = window
    return values * (high - low) + low


def _branch_images(model, study: PreprocessedStudy, result) -> dict[str, nib.Nifti1Image]:
    config = model.config
    windows = config.intensity_windows or {}
    images = {}

    def add(name: str, values: np.ndarray, task: dict):
        if task["task"] == "reconstruction":
            restored = study.restore(values[0], order=1)
            images[name] = nib.Nifti1Image(
                _to_modality_units(restored, windows.get(task["targets"][0])).astype(np.float32), study.reference_affine
            )
        else:
            probabilities = torch.from_numpy(values).softmax(dim=0)[1:].sum(dim=0).numpy()
            images[name] = nib.Nifti1Image(
                study.restore(probabilities, order=1).astype(np.float32), study.reference_affine
            )

    for spec in config.branches:
        if spec["name"] in result.branches:
            add(spec["name"], result.branches[spec["name"]], spec)
    if result.bottleneck_decoder is not None:
        add("bottleneck_decoder", result.bottleneck_decoder, config.bottleneck_decoder)
    return images


def predict_study(
    model,
    images: Mapping[str, NiftiSource],
    settings: SlidingWindowSettings | None = None,
    *,
    with_branches: bool = False,
    with_classification: bool = True,
    case_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> StudyPrediction:
    """Segment one study.

    Args:
        model: a `MirrorUNetModel` (see `load_model`).
        images: modality name → NIfTI path, bytes or nibabel image, exactly `model.config.modalities`.
            Modalities on other grids (a native CT beside the PET) are resampled onto the reference grid.
        settings: window, overlap, window batch, blending, precision, device and CPU workers (default:
            `SlidingWindowSettings(precision="auto")`: bf16 where the device computes it natively).
        with_branches: also return every branch output and the bottleneck decoder's (slower: runs all branches).
        with_classification: run the classification head, if the model has one.
        case_id: named in error messages.
        progress: called as `progress(done_windows, total_windows)`.
    """
    settings = settings or SlidingWindowSettings(precision="auto")
    config = model.config
    seconds = {}
    start = time.perf_counter()
    study = preprocess_study(images, config, case_id=case_id)
    seconds["preprocess"] = time.perf_counter() - start

    parts = ["logits"]
    if with_branches:
        parts += ["branches", "bottleneck_decoder"]
    if with_classification and config.classification_head is not None:
        parts.append("classification")
    start = time.perf_counter()
    # only the mask is needed: for two classes the sliding window blends one margin channel
    result = sliding_window_predict(
        model, study.image, settings, parts=tuple(parts), progress=progress, keep_logits=False
    )
    seconds["network"] = time.perf_counter() - start

    start = time.perf_counter()
    labels = result.labels
    mask = study.restore_nifti(labels, order=0, dtype=np.uint8)
    mask.header.set_data_dtype(np.uint8)
    branches = _branch_images(model, study, result) if with_branches else {}
    classification = None
    if result.classification is not None:
        head = config.classification_head
        names = ["lesion_presence"] if head["task"] == "lesion_presence" else list(head["class_names"])
        classification = {name: float(p) for name, p in zip(names, result.classification)}
    seconds["restore"] = time.perf_counter() - start
    run = {
        "precision": result.precision,
        "workers": result.workers,
        "window_batch": result.window_batch,
        "windows": result.num_windows,
    }
    return StudyPrediction(
        mask=mask, branches=branches, classification=classification, preprocessed=study, seconds=seconds, run=run
    )
