"""How the viewer draws a study: slices and PET maximum-intensity projections as RGB images, with CT
windows, the PET SUV range, overlays (label colours, probabilities, final mask vs ground truth), a
crosshair and the patient direction at each edge. Pure numpy and PIL: no UI.

Radiological convention: the patient's right is on the left of axial and coronal images; the viewer looks
at axial slices from the feet. Coronal and sagittal images are head up; sagittal images have the face
(anterior) on the left. Pixels are square in millimetres: each image's width and height follow the voxel
spacing, with one scale (pixels per mm) for all views of a study.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import UserInputError
from .study import (
    COMPARE,
    FINAL_MASK,
    FUSION,
    GROUND_TRUTH,
    NO_OVERLAY,
    Layer,
    ViewerStudy,
)

PLANES = ("axial", "coronal", "sagittal")
# The array axis each plane cuts (RAS: 0 = x, left → right; 1 = y, posterior → anterior; 2 = z, feet → head).
PLANE_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}

# name -> (width, level) in HU
CT_WINDOWS = {"Soft tissue": (400.0, 40.0), "Lung": (1500.0, -600.0), "Bone": (2000.0, 300.0)}
DEFAULT_CT_WINDOW = "Soft tissue"
DEFAULT_SUV_MAX = 8.0

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
    return np.asarray(
        Image.fromarray(np.ascontiguousarray(array2d, dtype=np.float32), mode="F").resize(size, Image.BILINEAR)
    )


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
            raise UserInputError(
                f"image {self.image!r} is not available for this study; expected one of: {', '.join(sorted(images))}"
            )
        if self.overlay not in overlays:
            raise UserInputError(
                f"overlay {self.overlay!r} is not available for this study; expected one of: {', '.join(sorted(overlays))}"
            )
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
    rgb = np.asarray(
        Image.fromarray(np.round(base * 255.0).astype(np.uint8)).resize(size, Image.BILINEAR), dtype=np.float64
    )
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
    for text, xy, anchor in (
        (left, (margin, height / 2), "lm"),
        (right, (width - margin, height / 2), "rm"),
        (top, (width / 2, margin), "mt"),
        (bottom, (width / 2, height - margin), "mb"),
    ):
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
        return [
            (PROBABILITY_COLOUR, f"{layer.title} (more opaque = more likely; below {PROBABILITY_FLOOR:g} not drawn)")
        ]
    return [
        (LABEL_COLOURS.get(value, (255, 255, 255)), f"{layer.title}: {name}") for value, name in layer.names.items()
    ]
