"""What the demo's viewer shows, without any UI: a study on a RAS display grid, windowed slices with
overlays, PET maximum-intensity projections and the lesion rows, as numpy arrays and PIL images.

The Gradio app (`mirror_unet_hf.demo_app`) only wires these functions to controls, so everything that
decides what a pixel means is tested here without a browser.

Display conventions (stated in the app too):

- Every volume lies on the grid of the model's reference modality (the PET, or T1Gd for brain models),
  brought to RAS+ (array axes run towards the patient's right, anterior and head) by flips and axis
  swaps only, never resampled. Oblique scans are shown on their closest axis-aligned grid.
- Radiological convention: the patient's right is on the left of axial and coronal images; the viewer
  looks at axial slices from the feet. Coronal and sagittal images are head up; sagittal images have the
  face (anterior) on the left.
- Pixels are square in millimetres: each image's width and height follow the voxel spacing, with one
  scale (pixels per mm) for all views of a study.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .data.nifti_io import (
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
from .data.preprocessing import resample_onto
from .errors import UserInputError
from .lesions import Lesion, LesionTable, lesion_table

PLANES = ("axial", "coronal", "sagittal")
# The array axis each plane cuts (RAS: 0 = x, left → right; 1 = y, posterior → anterior; 2 = z, feet → head).
PLANE_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}
DISPLAY_PX = 512  # pixels along the longest field-of-view axis of a study

# name -> (width, level) in HU
CT_WINDOWS = {"Soft tissue": (400.0, 40.0), "Lung": (1500.0, -600.0), "Bone": (2000.0, 300.0)}
DEFAULT_CT_WINDOW = "Soft tissue"
DEFAULT_SUV_MAX = 8.0

MODALITY_TITLES = {"ct": "CT", "pet": "PET (SUV)", "flair": "FLAIR", "t1w": "T1w", "t1gd": "T1Gd", "t2w": "T2w"}
FUSION = "fusion"
NO_OVERLAY = "none"
GROUND_TRUTH = "ground_truth"
FINAL_MASK = "final_mask"
COMPARE = "compare"

# overlay colours (RGB) by label value; PET/CT lesions are label 1
LABEL_COLOURS = {1: (0, 170, 255), 2: (255, 80, 80), 3: (255, 210, 0), 4: (200, 90, 255), 5: (90, 230, 120)}
PROBABILITY_COLOUR = (0, 170, 255)
PROBABILITY_FLOOR = 0.05  # probabilities below this are left transparent
# final mask vs ground truth: code -> (colour, meaning)
COMPARE_CODES = {
    1: ((0, 170, 255), "final mask only (false positive)"),
    2: ((40, 220, 90), "ground truth only (missed)"),
    3: ((255, 210, 0), "both (agreement)"),
}
CROSSHAIR_COLOUR = (255, 235, 59)
CROSSHAIR_ALPHA = 0.55
# the patient direction at each edge of a plane's image: (left, right, top, bottom)
EDGE_LETTERS = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I")}


def modality_title(name: str) -> str:
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
        raise UserInputError(f"the {modality_title(reference)} image is missing; the model needs it as its reference grid")
    loaded = {}
    for name, source in sources.items():
        described = names.get(name, name)
        image = load_nifti(source, None, described)
        data = require_3d(read_array(image, None, described), None, described)
        if min(data.shape) < 2:
            raise UserInputError(f"file {described!r}: has shape {data.shape}, a single 2D slice; expected a 3D volume")
        require_finite(data, None, described)
        loaded[name] = (grid_of(image), data)
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
        described = names.get("label", "ground truth")
        label_image = load_nifti(label, None, described)
        values = require_3d(read_array(label_image, None, described), None, described)
        if not same_grid(grid_of(label_image), grid):
            raise UserInputError(
                f"file {described!r} (ground truth) has shape {values.shape} on another grid than the "
                f"{modality_title(reference)} image {grid.shape}; expected the same shape and affine"
            )
        values = require_label_values(values, len(label_names), None, described)
        names_by_value = {value: label_names[value] for value in range(1, len(label_names))}
        study.overlays[GROUND_TRUTH] = Layer("Ground truth", "labels", study.to_display(values), names=names_by_value)
    return study


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


# -------------------------------------------------------------------------------------------- geometry


def plane_axes(plane: str) -> tuple[int, int]:
    """(array axis along the image columns, array axis along the image rows)."""
    if plane not in PLANE_AXIS:
        raise UserInputError(f"unknown plane {plane!r}; expected one of: {', '.join(PLANES)}")
    return tuple(axis for axis in range(3) if axis != PLANE_AXIS[plane])


def to_image_orientation(array2d: np.ndarray) -> np.ndarray:
    """A 2D cut ``(first kept axis, second kept axis)`` of a RAS volume as image rows × columns:
    rows run down the second axis backwards (head or anterior at the top), columns run the first
    axis backwards (patient right, or anterior for sagittal, on the left)."""
    return array2d.T[::-1, ::-1]


def take_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """One slice of a RAS volume in image orientation (see `to_image_orientation`)."""
    axis = PLANE_AXIS[plane]
    if not 0 <= index < volume.shape[axis]:
        raise UserInputError(f"{plane} slice {index + 1} is outside 1..{volume.shape[axis]}")
    return to_image_orientation(np.take(volume, index, axis=axis))


def project_max(volume: np.ndarray, plane: str) -> np.ndarray:
    """Maximum-intensity projection of a RAS volume through a plane's axis, in image orientation."""
    return to_image_orientation(volume.max(axis=PLANE_AXIS[plane]))


def image_size(study: ViewerStudy, plane: str) -> tuple[int, int]:
    """(width, height) in pixels of a plane's image: the field of view in mm times the study's scale."""
    cols, rows = plane_axes(plane)
    shape, spacing, scale = study.shape, study.spacing, study.px_per_mm
    return max(1, round(shape[cols] * spacing[cols] * scale)), max(1, round(shape[rows] * spacing[rows] * scale))


def _nearest(array2d: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upscaling to (width, height): output pixel centres sampled in the input."""
    width, height = size
    rows = np.minimum(((np.arange(height) + 0.5) * array2d.shape[0] / height).astype(np.intp), array2d.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * array2d.shape[1] / width).astype(np.intp), array2d.shape[1] - 1)
    return array2d[np.ix_(rows, cols)]


def _bilinear(array2d: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(array2d, dtype=np.float32), mode="F").resize(size, Image.BILINEAR))


# ------------------------------------------------------------------------------------------ rendering


@dataclass(frozen=True)
class Display:
    """The display controls: which image and overlay, how CT and PET are windowed, overlay opacity, crosshair."""

    image: str
    overlay: str = NO_OVERLAY
    ct_window: str = DEFAULT_CT_WINDOW
    suv_max: float = DEFAULT_SUV_MAX
    opacity: float = 0.5
    crosshair: bool = True

    def check(self, study: ViewerStudy) -> None:
        images = {key for _, key in study.image_choices()}
        overlays = {key for _, key in study.overlay_choices()}
        if self.image not in images:
            raise UserInputError(f"image {self.image!r} is not available for this study; expected one of: {', '.join(sorted(images))}")
        if self.overlay not in overlays:
            raise UserInputError(f"overlay {self.overlay!r} is not available for this study; expected one of: {', '.join(sorted(overlays))}")
        if self.ct_window not in CT_WINDOWS:
            raise UserInputError(f"CT window {self.ct_window!r} is unknown; expected one of: {', '.join(CT_WINDOWS)}")
        if not self.suv_max > 0:
            raise UserInputError(f"SUV display maximum {self.suv_max} must be positive")
        if not 0.0 <= self.opacity <= 1.0:
            raise UserInputError(f"overlay opacity {self.opacity} must be between 0 and 1")


def ct_grey(hu: np.ndarray, window: str) -> np.ndarray:
    """HU → [0, 1] grey for a named window (width, level)."""
    width, level = CT_WINDOWS[window]
    return np.clip((hu - (level - width / 2.0)) / width, 0.0, 1.0)


def hot(values: np.ndarray) -> np.ndarray:
    """[0, 1] → the 'hot' colour ramp (black, red, yellow, white), (..., 3)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    return np.clip(3.0 * v - np.array([0.0, 1.0, 2.0]), 0.0, 1.0)


def _layer_rgb(layer: Layer, values: np.ndarray, display: Display) -> np.ndarray:
    if layer.kind == "ct":
        grey = ct_grey(values, display.ct_window)
    elif layer.kind == "pet":
        grey = 1.0 - np.clip(values / display.suv_max, 0.0, 1.0)  # inverted grey: uptake is dark, as read clinically
    else:
        low, high = layer.window
        grey = np.clip((values - low) / (high - low), 0.0, 1.0)
    return np.repeat(grey[..., None], 3, axis=-1)


def _base_rgb(study: ViewerStudy, display: Display, cut) -> np.ndarray:
    """The image under the overlay, (rows, cols, 3) in [0, 1] at voxel resolution."""
    if display.image == FUSION:
        ct = ct_grey(cut(study.images["ct"].data), display.ct_window)[..., None]
        pet = np.clip(cut(study.images["pet"].data) / display.suv_max, 0.0, 1.0)
        alpha = np.clip(1.5 * pet, 0.0, 0.75)[..., None]  # low uptake lets the CT show through
        return (1.0 - alpha) * ct + alpha * hot(pet)
    layer = study.images[display.image]
    return _layer_rgb(layer, cut(layer.data), display)


def _overlay(study: ViewerStudy, display: Display, cut, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """(colour (H, W, 3) in [0, 1], alpha (H, W)) of the chosen overlay at display size, or None."""
    key = display.overlay
    if key == NO_OVERLAY:
        return None
    if key == COMPARE:
        mask = _nearest(cut(study.overlays[FINAL_MASK].data) > 0, size)
        truth = _nearest(cut(study.overlays[GROUND_TRUTH].data) > 0, size)
        codes = mask.astype(np.uint8) + 2 * truth.astype(np.uint8)
        palette = {code: colour for code, (colour, _) in COMPARE_CODES.items()}
    else:
        layer = study.overlays[key]
        if layer.kind == "probability":
            probability = _bilinear(cut(layer.data), size)
            alpha = np.where(probability >= PROBABILITY_FLOOR, display.opacity * np.clip(probability, 0.0, 1.0), 0.0)
            colour = np.broadcast_to(np.array(PROBABILITY_COLOUR, dtype=np.float64) / 255.0, (*alpha.shape, 3))
            return colour, alpha
        codes = _nearest(cut(layer.data), size)
        palette = LABEL_COLOURS
    colour = np.zeros((*codes.shape, 3))
    for code in np.unique(codes):
        if code:
            colour[codes == code] = np.array(palette.get(int(code), (255, 255, 255))) / 255.0
    return colour, np.where(codes > 0, display.opacity, 0.0)


def _compose(base: np.ndarray, overlay, size: tuple[int, int]) -> np.ndarray:
    rgb = np.asarray(Image.fromarray(np.round(base * 255.0).astype(np.uint8)).resize(size, Image.BILINEAR), dtype=np.float64)
    if overlay is not None:
        colour, alpha = overlay
        rgb = rgb * (1.0 - alpha[..., None]) + colour * 255.0 * alpha[..., None]
    return rgb


def _crosshair(rgb: np.ndarray, study: ViewerStudy, plane: str, position: Sequence[int]) -> None:
    """Thin lines where the two other planes cut this one."""
    cols_axis, rows_axis = plane_axes(plane)
    height, width = rgb.shape[:2]
    n_cols, n_rows = study.shape[cols_axis], study.shape[rows_axis]
    col = int((n_cols - 1 - position[cols_axis] + 0.5) * width / n_cols)
    row = int((n_rows - 1 - position[rows_axis] + 0.5) * height / n_rows)
    colour = np.array(CROSSHAIR_COLOUR, dtype=np.float64)
    dashes = (np.arange(max(height, width)) // 6) % 2 == 0
    rows_on = np.flatnonzero(dashes[:height])
    cols_on = np.flatnonzero(dashes[:width])
    rgb[rows_on, col] = (1 - CROSSHAIR_ALPHA) * rgb[rows_on, col] + CROSSHAIR_ALPHA * colour
    rgb[row, cols_on] = (1 - CROSSHAIR_ALPHA) * rgb[row, cols_on] + CROSSHAIR_ALPHA * colour


def _edge_letters(image: Image.Image, plane: str) -> Image.Image:
    """Write the patient direction at the middle of each edge (white on a dark outline, readable on any background)."""
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(14, image.height // 24))
    width, height = image.size
    left, right, top, bottom = EDGE_LETTERS[plane]
    margin = max(4, height // 80)
    for text, xy, anchor in ((left, (margin, height / 2), "lm"), (right, (width - margin, height / 2), "rm"),
                             (top, (width / 2, margin), "mt"), (bottom, (width / 2, height - margin), "mb")):
        draw.text(xy, text, fill=(255, 255, 255), font=font, anchor=anchor, stroke_width=1, stroke_fill=(0, 0, 0))
    return image


def _check_position(study: ViewerStudy, position: Sequence[int]) -> tuple[int, int, int]:
    position = tuple(int(v) for v in position)
    if len(position) != 3 or any(not 0 <= v < n for v, n in zip(position, study.shape)):
        raise UserInputError(f"position {position} is outside the volume of shape {study.shape}")
    return position


def render_slice(study: ViewerStudy, plane: str, position: Sequence[int], display: Display) -> Image.Image:
    """The slice of `plane` through `position` (RAS voxel, 0-based) as an RGB image of `image_size`,
    with the patient direction written at each edge (R/L, A/P, S/I)."""
    display.check(study)
    position = _check_position(study, position)
    index = position[PLANE_AXIS[plane]]

    def cut(volume):
        return take_slice(volume, plane, index)

    size = image_size(study, plane)
    rgb = _compose(_base_rgb(study, display, cut), _overlay(study, display, cut, size), size)
    if display.crosshair:
        _crosshair(rgb, study, plane, position)
    return _edge_letters(Image.fromarray(np.clip(np.round(rgb), 0, 255).astype(np.uint8)), plane)


def render_mip(study: ViewerStudy, plane: str, display: Display, position: Sequence[int] | None = None) -> Image.Image:
    """PET maximum-intensity projection through `plane` (coronal or sagittal), inverted grey, with the
    chosen overlay projected the same way (any voxel along the ray); a crosshair at `position` if asked."""
    if "pet" not in study.images:
        raise UserInputError("a maximum-intensity projection needs a PET image")
    display.check(study)
    mip_display = dataclasses.replace(display, image="pet")

    def cut(volume):
        return project_max(volume, plane)

    size = image_size(study, plane)
    rgb = _compose(_base_rgb(study, mip_display, cut), _overlay(study, mip_display, cut, size), size)
    if display.crosshair and position is not None:
        _crosshair(rgb, study, plane, _check_position(study, position))
    return _edge_letters(Image.fromarray(np.clip(np.round(rgb), 0, 255).astype(np.uint8)), plane)


def legend(study: ViewerStudy, overlay: str) -> list[tuple[tuple[int, int, int], str]]:
    """(colour, meaning) of each colour the chosen overlay can draw."""
    if overlay == NO_OVERLAY or overlay not in {key for _, key in study.overlay_choices()}:
        return []
    if overlay == COMPARE:
        return [(colour, text) for colour, text in COMPARE_CODES.values()]
    layer = study.overlays[overlay]
    if layer.kind == "probability":
        return [(PROBABILITY_COLOUR, f"{layer.title} (more opaque = more likely; below {PROBABILITY_FLOOR:g} not drawn)")]
    return [(LABEL_COLOURS.get(value, (255, 255, 255)), f"{layer.title}: {name}") for value, name in layer.names.items()]


# -------------------------------------------------------------------------------------------- lesions


def measure_lesions(study: ViewerStudy, mask: nib.Nifti1Image) -> LesionTable:
    """`lesion_table` of a final mask on the reference grid, with the PET's SUVs (zeros without a PET)."""
    values = np.asanyarray(mask.dataobj)
    if "pet" in study.sources:
        suv = np.asanyarray(study.sources["pet"].dataobj, dtype=np.float32)
    else:
        suv = np.zeros(values.shape, dtype=np.float32)
    return lesion_table(values, suv, mask.affine)


def location_text(centroid_mm: Sequence[float]) -> str:
    """World position in mm as radiologists read it: 'R 12, A 30, S 140' (RAS+: +x right, +y anterior, +z superior)."""
    x, y, z = centroid_mm
    return f"{'R' if x >= 0 else 'L'} {abs(x):.0f}, {'A' if y >= 0 else 'P'} {abs(y):.0f}, {'S' if z >= 0 else 'I'} {abs(z):.0f}"


PET_LESION_COLUMNS = ("Lesion", "Volume (ml)", "SUVmax", "SUVmean", "TLG", "Centroid (mm)")
MRI_LESION_COLUMNS = ("Lesion", "Volume (ml)", "Centroid (mm)")


def lesion_rows(table: LesionTable, with_suv: bool) -> tuple[tuple[str, ...], list[list]]:
    """(column names, rows) of the lesion table as the viewer lists it; SUV columns only for PET."""
    rows = []
    for lesion in table.lesions:
        suv = [round(lesion.suv_max, 2), round(lesion.suv_mean, 2), round(lesion.tlg, 2)] if with_suv else []
        rows.append([lesion.lesion_id, round(lesion.volume_ml, 2), *suv, location_text(lesion.centroid_mm)])
    return (PET_LESION_COLUMNS if with_suv else MRI_LESION_COLUMNS), rows


def lesion_summary(table: LesionTable, with_suv: bool) -> str:
    """The study totals in one line."""
    count = table.lesion_count
    noun = "lesion" if count == 1 else "lesions"
    if not with_suv:
        return f"{count} connected {noun} · total volume {table.total_mtv_ml:.2f} ml"
    suv_max = "–" if table.suv_max is None else f"{table.suv_max:.2f}"
    return f"{count} {noun} · MTV {table.total_mtv_ml:.2f} ml · TLG {table.total_tlg:.2f} · SUVmax {suv_max}"


def lesion_position(study: ViewerStudy, lesion: Lesion) -> tuple[int, int, int]:
    """The display voxel of a lesion's centroid (moved to its nearest voxel when the centroid lies outside it)."""
    position = study.display_index(lesion.centroid_mm)
    mask = study.overlays.get(FINAL_MASK)
    if mask is None or mask.data[position]:
        return position
    # a ring-shaped lesion's centroid can fall in a hole: use its voxel closest to the centroid instead
    reference_to_display = np.linalg.inv(study.affine) @ study.reference_grid.affine
    corners = np.rint(nib.affines.apply_affine(reference_to_display, [lesion.bbox_min, lesion.bbox_max])).astype(int)
    box = tuple(slice(low, high + 1) for low, high in zip(corners.min(axis=0), corners.max(axis=0)))
    inside = np.argwhere(mask.data[box] > 0)
    if inside.size == 0:
        return position
    offset = np.array([s.start for s in box])
    nearest = inside[np.argmin(((inside + offset - np.array(position)) ** 2).sum(axis=1))] + offset
    return tuple(int(v) for v in nearest)
