"""A study as the viewer holds it: the original images the model reads, and every image and overlay
(ground truth, final mask, branch outputs) as a `Layer` on one RAS display grid.

Every volume lies on the grid of the model's reference modality (the PET, or T1Gd for brain models),
brought to RAS+ (array axes run towards the patient's right, anterior and head) by flips and axis swaps
only, never resampled; other modalities are resampled onto the reference grid first. Oblique scans are
shown on their closest axis-aligned grid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from ..data.nifti_io import (
    Grid,
    NiftiSource,
    grid_of,
    grids_overlap,
    load_nifti,
    read_array,
    require_3d,
    require_finite,
    require_label_values,
    same_grid,
)
from ..data.preprocessing import resample_onto
from ..errors import UserInputError

DISPLAY_PX = 512  # pixels along the longest field-of-view axis of a study

MODALITY_TITLES = {"ct": "CT", "pet": "PET (SUV)", "flair": "FLAIR", "t1w": "T1w", "t1gd": "T1Gd", "t2w": "T2w"}
# keys of the images and overlays that are not a modality or a branch output
FUSION = "fusion"
NO_OVERLAY = "none"
GROUND_TRUTH = "ground_truth"
FINAL_MASK = "final_mask"
COMPARE = "compare"


def modality_title(name: str) -> str:
    """How a modality is named on screen ("PET (SUV)", "T1Gd"; unknown names in capitals)."""
    return MODALITY_TITLES.get(name, name.upper())


def image_kind(modality: str) -> str:
    """How a modality is windowed: CT in HU presets, PET in SUV, anything else (MRI) by its own percentiles."""
    return modality if modality in ("ct", "pet") else "mri"


@dataclass
class Layer:
    """One volume the viewer can show, on the study's display (RAS) grid.

    kind: ``"ct"``, ``"pet"`` or ``"mri"`` for images; ``"labels"`` or ``"probability"`` for overlays.
    window: the display range of an ``"mri"`` image (its 0.5th-99.5th percentile of non-zero voxels).
    names: label value -> class name, for ``"labels"`` overlays.
    """

    title: str
    kind: str
    data: np.ndarray
    window: tuple[float, float] | None = None
    names: dict[int, str] = field(default_factory=dict)


@dataclass
class ViewerStudy:
    """A loaded study: the original images (what the model reads) and every layer on the display grid.

    The display grid is the reference modality's grid reoriented to RAS+ (``ornt`` maps the original
    voxel axes onto it); other modalities are resampled onto the reference grid first.
    """

    case_id: str
    reference: str
    sources: dict[str, nib.Nifti1Image]
    reference_grid: Grid
    ornt: np.ndarray
    affine: np.ndarray
    images: dict[str, Layer] = field(default_factory=dict)
    overlays: dict[str, Layer] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in next(iter(self.images.values())).data.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def px_per_mm(self) -> float:
        extent = max(n * s for n, s in zip(self.shape, self.spacing))
        return DISPLAY_PX / extent

    def to_display(self, array: np.ndarray) -> np.ndarray:
        """An array on the reference modality's original grid, reoriented onto the display grid."""
        return nib.orientations.apply_orientation(np.asarray(array), self.ornt)

    def image_choices(self) -> list[tuple[str, str]]:
        """(title, key) of every image that can be shown, the PET/CT fusion after its inputs."""
        choices = [(layer.title, key) for key, layer in self.images.items()]
        if "ct" in self.images and "pet" in self.images:
            position = list(self.images).index("pet") + 1
            choices.insert(position, ("PET/CT fusion", FUSION))
        return choices

    def overlay_choices(self) -> list[tuple[str, str]]:
        """(title, key) of every overlay: final mask, ground truth, their comparison, branch probabilities, none."""
        choices = []
        if FINAL_MASK in self.overlays:
            choices.append((self.overlays[FINAL_MASK].title, FINAL_MASK))
        if GROUND_TRUTH in self.overlays:
            choices.append((self.overlays[GROUND_TRUTH].title, GROUND_TRUTH))
        if FINAL_MASK in self.overlays and GROUND_TRUTH in self.overlays:
            choices.append(("Final mask vs ground truth", COMPARE))
        choices += [(layer.title, key) for key, layer in self.overlays.items() if key not in (FINAL_MASK, GROUND_TRUTH)]
        choices.append(("None", NO_OVERLAY))
        return choices

    def centre(self) -> tuple[int, int, int]:
        return tuple(n // 2 for n in self.shape)

    def display_index(self, world_mm: Sequence[float]) -> tuple[int, int, int]:
        """The display voxel nearest to a world point (mm), clipped into the volume."""
        voxel = np.linalg.inv(self.affine) @ np.array([*world_mm, 1.0])
        return tuple(int(np.clip(round(float(v)), 0, n - 1)) for v, n in zip(voxel[:3], self.shape))


# ---------------------------------------------------------------------------------------------- loading


def _mri_window(data: np.ndarray) -> tuple[float, float]:
    values = data[data != 0]
    if values.size == 0:
        return 0.0, 1.0
    if values.size > 2_000_000:  # percentiles of a strided sample are indistinguishable and much faster
        values = values[:: values.size // 1_000_000]
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    return (low, high) if high > low else (low, low + 1.0)


def _image_layer(name: str, data: np.ndarray, title: str | None = None) -> Layer:
    kind = image_kind(name)
    return Layer(title or modality_title(name), kind, data, _mri_window(data) if kind == "mri" else None)


def load_study(
    sources: Mapping[str, NiftiSource],
    reference: str,
    *,
    label: NiftiSource | None = None,
    label_names: Sequence[str] = ("background", "lesion"),
    case_id: str = "study",
    file_names: Mapping[str, str] | None = None,
) -> ViewerStudy:
    """Read and check a study's modality files (and optional ground truth) for the viewer.

    Args:
        sources: modality name -> NIfTI path, bytes or image; must include ``reference``.
        reference: the modality whose grid the model's outputs lie on (``config.reference_modality``).
        label: ground truth on the reference grid, values in ``0..len(label_names)-1``.
        file_names: modality name (and ``"label"``) -> how the file is named in messages (e.g. an upload's name).

    Raises ``UserInputError`` naming the file for anything the model could not read either: not NIfTI,
    not 3D, NaN/Inf voxels, a modality whose grid does not overlap the reference, a label on another grid.
    """
    names = dict(file_names or {})
    if reference not in sources:
        raise UserInputError(
            f"the {modality_title(reference)} image is missing; the model needs it as its reference grid"
        )
    loaded = _read_modalities(sources, names)
    grid, _ = loaded[reference]
    ornt = nib.orientations.io_orientation(grid.affine)
    affine = grid.affine @ nib.orientations.inv_ornt_aff(ornt, grid.shape)
    study = ViewerStudy(case_id, reference, {}, grid, ornt, affine)
    for name, (own_grid, data) in loaded.items():
        # the model reads the original images; the viewer shows every modality on the reference grid
        study.sources[name] = nib.Nifti1Image(data, own_grid.affine)
        if not same_grid(own_grid, grid):
            if not grids_overlap(own_grid, grid):
                raise UserInputError(
                    f"file {names.get(name, name)!r} ({modality_title(name)}) does not overlap the "
                    f"{modality_title(reference)} image in space; the two files must come from the same study"
                )
            data = resample_onto(data, own_grid, grid, order=1, cval=float(data.min()))
        study.images[name] = _image_layer(name, study.to_display(data))
    if label is not None:
        _add_ground_truth(study, label, names.get("label", "ground truth"), label_names)
    return study


def _read_modalities(
    sources: Mapping[str, NiftiSource], names: Mapping[str, str]
) -> dict[str, tuple[Grid, np.ndarray]]:
    """modality -> (its grid, its checked 3D voxels); messages name each file as `names` says."""
    loaded = {}
    for name, source in sources.items():
        described = names.get(name, name)
        image = load_nifti(source, None, described)
        data = require_3d(read_array(image, None, described), None, described)
        if min(data.shape) < 2:
            raise UserInputError(f"file {described!r}: has shape {data.shape}, a single 2D slice; expected a 3D volume")
        require_finite(data, None, described)
        loaded[name] = (grid_of(image), data)
    return loaded


def _add_ground_truth(study: ViewerStudy, label: NiftiSource, described: str, label_names: Sequence[str]) -> None:
    """The ground truth as an overlay; it must lie on the reference grid and hold only known label values."""
    grid = study.reference_grid
    label_image = load_nifti(label, None, described)
    values = require_3d(read_array(label_image, None, described), None, described)
    if not same_grid(grid_of(label_image), grid):
        raise UserInputError(
            f"file {described!r} (ground truth) has shape {values.shape} on another grid than the "
            f"{modality_title(study.reference)} image {grid.shape}; expected the same shape and affine"
        )
    values = require_label_values(values, len(label_names), None, described)
    names_by_value = {value: label_names[value] for value in range(1, len(label_names))}
    study.overlays[GROUND_TRUTH] = Layer("Ground truth", "labels", study.to_display(values), names=names_by_value)


# ------------------------------------------------------------------------------------- model outputs


def _part_title(name: str) -> str:
    return "Bottleneck decoder" if name == "bottleneck_decoder" else f"{modality_title(name).split(' ')[0]} branch"


def add_prediction(study: ViewerStudy, prediction, config) -> None:
    """Add a `StudyPrediction`'s layers: the final mask, each reconstruction as an image ("CT branch:
    CT reconstruction") and each segmentation output as a probability overlay ("PET branch: lesion probability")."""
    final_names = dict(zip(config.final_label_values[1:], config.final_class_names[1:]))
    mask = study.to_display(np.asanyarray(prediction.mask.dataobj))
    study.overlays[FINAL_MASK] = Layer("Final mask", "labels", mask, names=final_names)
    parts = [(spec["name"], spec) for spec in config.branches]
    if config.bottleneck_decoder:
        parts.append(("bottleneck_decoder", config.bottleneck_decoder))
    for name, spec in parts:
        if name not in prediction.branches:
            continue
        # half precision is plenty for display and halves what a session keeps in memory
        data = study.to_display(np.asanyarray(prediction.branches[name].dataobj, dtype=np.float32).astype(np.float16))
        if spec["task"] == "reconstruction":
            target = spec["targets"][0]
            title = f"{_part_title(name)}: {modality_title(target).split(' ')[0]} reconstruction"
            study.images[f"rec:{name}"] = _image_layer(target, data, title)
        elif spec["task"] == "segmentation":
            what = ", ".join(" + ".join(config.label_names[v] for v in group) for group in spec["classes"])
            study.overlays[f"prob:{name}"] = Layer(f"{_part_title(name)}: {what} probability", "probability", data)


def clear_prediction(study: ViewerStudy) -> None:
    """Drop every model output (before segmenting the study again)."""
    for key in [k for k in study.images if k.startswith("rec:")]:
        del study.images[key]
    for key in [k for k in study.overlays if k != GROUND_TRUTH]:
        del study.overlays[key]
