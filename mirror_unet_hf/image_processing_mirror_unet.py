"""The image processor of Mirror U-Net: one 3D study (a NIfTI image per modality) in, network input out, and back.

`MirrorUNetImageProcessor` is saved as ``preprocessor_config.json`` next to the weights and travels as Hub
remote code with them, so ``AutoImageProcessor.from_pretrained(repo)`` with remote code trusted works where
this package is not installed. It therefore depends on numpy, scipy, nibabel, torch and transformers only.
The functions below are the ONE implementation of the resampling steps: ``mirror_unet_hf.data.preprocessing``
(training, validation, ``mirror-unet predict``) calls them too, so the processor and the package cannot drift.

Steps of `MirrorUNetImageProcessor.preprocess`, in order:

1. every other modality is resampled onto the reference modality's grid through the two affines
   (``stack_on_reference``; trilinear, outside its field of view a modality takes its own minimum);
2. reorientation to RAS+ (a lossless flip/transpose chosen by ``nibabel.orientations``);
3. resampling to ``target_spacing`` (images trilinear, labels nearest), keeping the outer corner of the
   field of view fixed: output voxel ``i`` samples input voxel ``(i + 0.5) * r - 0.5`` with
   ``r = target / current spacing`` and edge values repeated; the output has ``round(n / r)`` voxels;
4. intensities: a modality with an intensity window is clipped to ``[low, high]`` and scaled to [0, 1];
   any other is z-scored over its non-zero voxels (zeros stay 0, as MONAI ``nonzero=True``).

`restore` (and `post_process_semantic_segmentation` for label masks) maps an array on the preprocessed grid
back onto the ORIGINAL grid of the reference modality: the inverse of steps 2-3.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# A resampled study above this many bytes (float32) comes from a wrong voxel size in a header.
MAX_RESAMPLED_BYTES = 4 * 1024**3


class ProcessorInputError(ValueError):
    """A study or setting the processor cannot use; the message names the file or value and what was expected."""


# ---------------------------------------------------------------------------------------------- settings


def checked_settings(modalities: Any, reference_modality: Any, target_spacing: Any, intensity_windows: Any) -> dict:
    """The four preprocessing settings as plain python values, checked; `ProcessorInputError` names a bad one."""
    names = [str(m) for m in (modalities or [])]
    if not names or len(set(names)) != len(names):
        raise ProcessorInputError(f"config.modalities must be a non-empty list of distinct names, got {modalities!r}")
    listed, reference = ", ".join(names), str(reference_modality)
    if reference not in names:
        raise ProcessorInputError(f"config.reference_modality {reference!r} is not one of config.modalities: {listed}")
    spacing = None if target_spacing is None else [float(v) for v in target_spacing]
    if spacing is not None and (len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing)):
        raise ProcessorInputError(
            f"config.target_spacing must be 3 positive numbers in mm or None, got {target_spacing!r}"
        )
    windows = {}
    for name, window in dict(intensity_windows or {}).items():
        if name not in names:
            other = f"which is not one of config.modalities: {listed}"
            raise ProcessorInputError(f"config.intensity_windows names {name!r}, {other}")
        low, high = (float(v) for v in window)
        if not high > low:
            expected = "expected [low, high] with high > low"
            raise ProcessorInputError(f"config.intensity_windows[{name!r}] = {list(window)}; {expected}")
        windows[name] = [low, high]
    return {
        "modalities": names,
        "reference_modality": reference,
        "target_spacing": spacing,
        "intensity_windows": windows,
    }


# ---------------------------------------------------------------------------------------------- grids


def voxel_sizes(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis of a 4x4 voxel-to-world matrix."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def grids_match(shape_a: Sequence[int], affine_a: np.ndarray, shape_b: Sequence[int], affine_b: np.ndarray) -> bool:
    """Same shape and affines equal to 1 % of the smallest voxel (float32 header noise is tolerated)."""
    if tuple(shape_a) != tuple(shape_b):
        return False
    tolerance = 0.01 * min(min(voxel_sizes(affine_a)), min(voxel_sizes(affine_b)))
    return bool(np.allclose(affine_a, affine_b, rtol=0.0, atol=tolerance))


def grids_overlap(shape_a: Sequence[int], affine_a: np.ndarray, shape_b: Sequence[int], affine_b: np.ndarray) -> bool:
    """Whether the world-space bounding boxes of two grids (outer voxel corners) share a positive volume."""

    def world_corners(shape, affine):
        highs = np.asarray(shape, dtype=float) - 0.5
        corners = [[x, y, z] for x in (-0.5, highs[0]) for y in (-0.5, highs[1]) for z in (-0.5, highs[2])]
        return np.array(corners) @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]

    ca, cb = world_corners(shape_a, affine_a), world_corners(shape_b, affine_b)
    return bool(np.all(np.minimum(ca.max(0), cb.max(0)) > np.maximum(ca.min(0), cb.min(0))))


def resample_onto(
    data: np.ndarray,
    source_affine: np.ndarray,
    target_shape: Sequence[int],
    target_affine: np.ndarray,
    order: int,
    cval: float,
) -> np.ndarray:
    """Sample ``data`` (on ``source_affine``) at the voxel centres of the target grid through the world coordinates."""
    voxel_map = np.linalg.inv(source_affine) @ np.asarray(target_affine, dtype=np.float64)
    return ndimage.affine_transform(
        data,
        voxel_map[:3, :3],
        offset=voxel_map[:3, 3],
        output_shape=tuple(int(n) for n in target_shape),
        order=order,
        mode="constant",
        cval=cval,
        prefilter=False,
    ).astype(np.float32, copy=False)


def stack_on_reference(
    volumes: dict[str, tuple[np.ndarray, np.ndarray]], modalities: Sequence[str], reference: str, describe=None
) -> np.ndarray:
    """``(C, X, Y, Z)`` float32 of every modality on the reference modality's grid, in ``modalities`` order.

    ``volumes``: modality -> (3D float32 array, 4x4 affine); entries are removed as they are stacked, so that an
    original is freed once it is on the reference grid. ``describe(name)`` names a modality's file in messages.
    """
    describe = describe or (lambda name: f"{name} image")
    reference_data, reference_affine = volumes[reference]
    shape = reference_data.shape
    channels = []
    for name in modalities:
        data, affine = volumes.pop(name)
        if not grids_match(data.shape, affine, shape, reference_affine):
            if not grids_overlap(data.shape, affine, shape, reference_affine):
                raise ProcessorInputError(
                    f"{describe(name)}: grid does not overlap the {reference!r} grid in world space; check the affines"
                )
            data = resample_onto(data, affine, shape, reference_affine, order=1, cval=float(data.min()))
        channels.append(data)
    return np.stack(channels)


@dataclass(frozen=True)
class ResamplingPlan:
    """How a reference grid becomes the network's grid: the RAS reorientation, the new grid, the spacing ratio."""

    orientation: np.ndarray
    shape: tuple[int, int, int]
    affine: np.ndarray
    ratio: np.ndarray


def ras_orientation(shape: Sequence[int], affine: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int], np.ndarray]:
    """The flip/transpose that brings a grid to RAS+, and the shape and affine it produces."""
    orientation = nib.orientations.io_orientation(affine)
    oriented = [0, 0, 0]
    for axis, (new_axis, _) in enumerate(orientation):
        oriented[int(new_axis)] = int(shape[axis])
    oriented_affine = np.asarray(affine, dtype=np.float64) @ nib.orientations.inv_ornt_aff(orientation, tuple(shape))
    return orientation, tuple(oriented), oriented_affine


def resampling_plan(
    reference_shape: Sequence[int], reference_affine: np.ndarray, target_spacing: Sequence[float] | None
) -> ResamplingPlan:
    """RAS orientation, then a grid of ``target_spacing`` covering the same field of view (corner-aligned)."""
    orientation, shape, affine = ras_orientation(reference_shape, reference_affine)
    if target_spacing is None:
        return ResamplingPlan(orientation, shape, affine, np.ones(3))
    ratio = np.asarray(target_spacing, dtype=np.float64) / np.asarray(voxel_sizes(affine))
    if np.allclose(ratio, 1.0, rtol=0, atol=1e-6):
        return ResamplingPlan(orientation, shape, affine, np.ones(3))
    step = np.eye(4)
    step[:3, :3] = np.diag(ratio)
    step[:3, 3] = 0.5 * ratio - 0.5
    target_shape = tuple(max(1, round(n / r)) for n, r in zip(shape, ratio, strict=True))
    return ResamplingPlan(orientation, target_shape, affine @ step, ratio)


def reorient(array: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    """Apply a nibabel orientation (flips and an axis permutation) to the last three axes of ``(C, X, Y, Z)``."""
    return np.stack([nib.orientations.apply_orientation(channel, orientation) for channel in array])


def zoom(array: np.ndarray, ratio: np.ndarray, out_shape: Sequence[int], order: int) -> np.ndarray:
    """Axis-aligned resampling of ``(C, X, Y, Z)``: output voxel ``i`` samples input ``(i + 0.5) * ratio - 0.5``.

    Edges repeat (like ``mode="nearest"``). Order 0 gathers indices and keeps the dtype; order 1 is trilinear
    float32 through ``torch.nn.functional.interpolate`` (the same samples as ``scipy.ndimage.affine_transform``
    with a diagonal matrix to 3e-6, and ~15x faster on a whole-body volume).
    """
    out_shape = tuple(int(n) for n in out_shape)
    if np.allclose(ratio, 1.0, rtol=0, atol=1e-9) and tuple(array.shape[1:]) == out_shape:
        return array
    if order == 0:
        index = [
            np.clip(np.floor((np.arange(n_out) + 0.5) * r), 0, n_in - 1).astype(np.intp)
            for n_out, r, n_in in zip(out_shape, ratio, array.shape[1:], strict=True)
        ]
        return array[(slice(None), *np.ix_(*index))]
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    scale = [1.0 / float(r) for r in ratio]
    # torch makes floor(n * scale) voxels; pad the far edge by repetition (which is what clamping
    # samples anyway) until there are enough, then cut to the exact shape.
    pads = []
    for n_in, s, n_out in zip(array.shape[1:], scale, out_shape, strict=True):
        extra = 0
        while math.floor((n_in + extra) * s) < n_out:
            extra += 1
        pads.append(extra)
    if any(pads):
        tensor = F.pad(tensor, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")
    with torch.no_grad():
        out = F.interpolate(
            tensor, scale_factor=scale, mode="trilinear", align_corners=False, recompute_scale_factor=False
        )
    return out[0, :, : out_shape[0], : out_shape[1], : out_shape[2]].numpy()


def apply_plan(array: np.ndarray, plan: ResamplingPlan, order: int) -> np.ndarray:
    """``(C, X, Y, Z)`` on the reference grid -> on the plan's grid (order 1: images, order 0: labels)."""
    return zoom(reorient(array, plan.orientation), plan.ratio, plan.shape, order=order)


def normalise_in_place(channel: np.ndarray, window: Sequence[float] | None) -> None:
    """Clip to ``window`` and scale to [0, 1]; without a window, z-score over the non-zero voxels."""
    if window is not None:
        low, high = window
        np.clip(channel, low, high, out=channel)
        channel -= low
        channel /= high - low
        return
    nonzero = channel != 0
    if not nonzero.any():
        return
    values = channel[nonzero]
    mean = float(values.mean(dtype=np.float64))
    std = float(values.std(dtype=np.float64))
    channel[nonzero] = (values - mean) / (std if std > 1e-8 else 1.0)


def normalise_channels(stacked: np.ndarray, modalities: Sequence[str], windows: Mapping[str, Sequence[float]]) -> None:
    """`normalise_in_place` on each channel of ``(C, X, Y, Z)`` with its modality's window."""
    for index, name in enumerate(modalities):
        normalise_in_place(stacked[index], windows.get(name))


def restore_to_reference(
    array: np.ndarray,
    shape: Sequence[int],
    affine: np.ndarray,
    reference_shape: Sequence[int],
    reference_affine: np.ndarray,
    order: int = 1,
) -> np.ndarray:
    """Map ``(C, X, Y, Z)`` or ``(X, Y, Z)`` on a preprocessed grid (``shape``, ``affine``) back onto the
    reference grid it was made from. ``order=0`` (nearest) keeps the dtype, for labels; ``order=1``
    (trilinear) returns float32, for probabilities or logits."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if order not in (0, 1):
        raise ProcessorInputError(f"order must be 0 (nearest, labels) or 1 (linear, probabilities), got {order!r}")
    squeeze = array.ndim == 3
    if squeeze:
        array = array[None]
    expected = tuple(int(n) for n in shape)
    if array.ndim != 4 or tuple(array.shape[1:]) != expected:
        shape = tuple(array.shape)
        raise ProcessorInputError(
            f"array of shape {shape} is not on the preprocessed grid; expected (C, {expected}) or {expected}"
        )
    orientation, oriented_shape, oriented_affine = ras_orientation(
        reference_shape, np.asarray(reference_affine, np.float64)
    )
    forward = np.linalg.inv(oriented_affine) @ np.asarray(affine, dtype=np.float64)
    ratio = np.diag(forward[:3, :3]).copy()
    aligned = np.allclose(forward[:3, :3], np.diag(ratio), atol=1e-6)
    if not aligned or not np.allclose(forward[:3, 3], 0.5 * ratio - 0.5, atol=1e-4):
        raise ValueError(
            "the preprocessed affine is not an axis-aligned rescaling of the reference grid; was it modified?"
        )
    restored = zoom(array, 1.0 / ratio, oriented_shape, order=order)
    inverse = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), orientation)
    restored = np.ascontiguousarray(reorient(restored, inverse))
    return restored[0] if squeeze else restored


# ---------------------------------------------------------------------------------------------- files


def load_volume(source: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(3D float32 voxels with scaling applied, 4x4 affine) of a NIfTI path or nibabel image."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ProcessorInputError(f"{name}: file not found ({path})")
        try:
            image = nib.load(str(path))
        except Exception as error:  # nibabel raises many types for a bad file
            raise ProcessorInputError(f"{name}: not a readable NIfTI file ({path}: {error})") from None
    elif isinstance(source, nib.spatialimages.SpatialImage):
        image = source
    else:
        raise ProcessorInputError(
            f"{name}: got a {type(source).__name__}; expected a NIfTI file path or a nibabel image"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        data = np.asarray(image.dataobj, dtype=np.float32)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ProcessorInputError(f"{name}: is {data.ndim}D with shape {tuple(data.shape)}; expected a 3D volume")
    if not np.isfinite(data).all():
        raise ProcessorInputError(f"{name}: has NaN/Inf voxels; expected finite values")
    return data, np.asarray(image.affine, dtype=np.float64)


def describe_source(source: Any, name: str) -> str:
    """How a modality's input is named in messages: its path, the image's file name, or '<name> image'."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    file_map = getattr(source, "file_map", None) or {}
    filename = getattr(file_map.get("image"), "filename", None)
    return str(filename) if filename else f"{name} image"


@dataclass(frozen=True)
class StudyGrid:
    """Where a preprocessed study came from: the reference modality's original grid and the network's grid."""

    reference_shape: tuple[int, int, int]
    reference_affine: np.ndarray
    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        return voxel_sizes(self.affine)


# ---------------------------------------------------------------------------------------------- processor


class MirrorUNetImageProcessor(BaseImageProcessor):
    r"""
    Turns one 3D study (a NIfTI file or nibabel image per modality, or a study folder) into the `pixel_values` of
    a Mirror U-Net, and maps its outputs back onto the study's grid (see the module docstring for the steps).

    Args:
        modalities (`list[str]`): channel order of `pixel_values`, e.g. `["ct", "pet"]`.
        reference_modality (`str`): the grid everything is resampled onto first, and the grid of the outputs.
        target_spacing (`list[float]`, *optional*): voxel size in mm (RAS order); None keeps the reference spacing.
        intensity_windows (`dict[str, list[float]]`, *optional*): modality -> `[low, high]`, clipped and scaled
            to [0, 1]; other modalities are z-scored over their non-zero voxels.
        study_file_names (`dict[str, list[str]]`, *optional*): file names a study folder uses for a modality
            (e.g. AutoPET's `SUV.nii.gz` for `pet`), tried before `<modality>.nii.gz` and `<modality>.nii`.

    Calling it (`processor({"ct": "CTres.nii.gz", "pet": "SUV.nii.gz"})`) runs `preprocess`.
    """

    model_input_names = ["pixel_values"]
    _auto_class = "AutoImageProcessor"  # save_pretrained copies this file and writes the auto_map

    def __init__(
        self,
        modalities: Sequence[str] = ("ct", "pet"),
        reference_modality: str | None = None,
        target_spacing: Sequence[float] | None = None,
        intensity_windows: Mapping[str, Sequence[float]] | None = None,
        study_file_names: Mapping[str, Sequence[str]] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        modalities = list(modalities)
        reference = reference_modality if reference_modality is not None else (modalities[-1] if modalities else None)
        settings = checked_settings(modalities, reference, target_spacing, intensity_windows)
        self.modalities = settings["modalities"]
        self.reference_modality = settings["reference_modality"]
        self.target_spacing = settings["target_spacing"]
        self.intensity_windows = settings["intensity_windows"]
        self.study_file_names = {str(m): [str(n) for n in names] for m, names in (study_file_names or {}).items()}

    @staticmethod
    def default_study_file_names() -> dict[str, list[str]]:
        """Modality -> study-folder file names for `from_model_config`. `mirror_unet_hf.registration` replaces it
        with the task registry's (e.g. AutoPET's ``CTres.nii.gz``/``SUV.nii.gz``), so that processors saved with
        the package know the data sets' layouts; remote code alone knows only ``<modality>.nii.gz``."""
        return {}

    @classmethod
    def from_model_config(cls, config: Any, **kwargs) -> MirrorUNetImageProcessor:
        """The processor of a Mirror U-Net config: its `modalities`, `reference_modality`, `target_spacing` and
        `intensity_windows` (what every `config.json` carries, so older checkpoints without a
        `preprocessor_config.json` get the same processor)."""
        modalities = list(config.modalities)
        known = cls.default_study_file_names()
        names = {m: list(known[m]) for m in modalities if known.get(m)}
        settings = {
            "modalities": modalities,
            "reference_modality": config.reference_modality,
            "target_spacing": config.target_spacing,
            "intensity_windows": config.intensity_windows,
            "study_file_names": names,
        }
        return cls(**{**settings, **kwargs})

    # ------------------------------------------------------------------ inputs

    def study_images(self, study: Any) -> dict[str, Any]:
        """Modality -> file or image of one study: a mapping is checked as it is; a folder is searched for each
        modality's `study_file_names`, then `<modality>.nii.gz` / `<modality>.nii`."""
        if isinstance(study, Mapping):
            missing = [m for m in self.modalities if m not in study]
            if missing:
                raise ProcessorInputError(
                    f"modality {missing[0]!r} is missing; expected images for: {', '.join(self.modalities)}"
                )
            unknown = [m for m in study if m not in self.modalities]
            if unknown:
                raise ProcessorInputError(f"unknown modality {unknown[0]!r}; accepted: {', '.join(self.modalities)}")
            return {m: study[m] for m in self.modalities}
        if not isinstance(study, (str, os.PathLike)):
            raise ProcessorInputError(
                f"got a {type(study).__name__}; expected a study folder or a mapping modality -> NIfTI file, "
                f"e.g. {{{', '.join(repr(m) + ': ...' for m in self.modalities)}}}"
            )
        folder = Path(study)
        if not folder.is_dir():
            raise ProcessorInputError(f"study {folder} is not a folder; expected a folder of NIfTI files per modality")
        return {name: self._study_file(folder, name) for name in self.modalities}

    def _study_file(self, folder: Path, modality: str) -> Path:
        candidates = [*self.study_file_names.get(modality, []), *(f"{modality}{s}" for s in NIFTI_SUFFIXES)]
        for candidate in candidates:
            if (folder / candidate).is_file():
                return folder / candidate
        raise ProcessorInputError(
            f"study {folder}: no file for modality {modality!r}; looked for {', '.join(candidates)}"
        )

    # ------------------------------------------------------------------ forward and inverse mapping

    def preprocess(self, images: Any, return_tensors: str | None = None, **kwargs) -> BatchFeature:
        """`pixel_values` `(1, M, X, Y, Z)` (float32, RAS, `target_spacing`, normalised) of one study and its
        `grid` (a `StudyGrid`, what `restore` needs). `images`: see `study_images`."""
        if kwargs:
            raise ProcessorInputError(f"unknown argument(s) {', '.join(sorted(kwargs))}; accepted: return_tensors")
        sources = self.study_images(images)
        volumes = {name: load_volume(source, describe_source(source, name)) for name, source in sources.items()}
        reference_data, reference_affine = volumes[self.reference_modality]
        reference_shape = tuple(int(n) for n in reference_data.shape)
        stacked = stack_on_reference(
            volumes, self.modalities, self.reference_modality, lambda name: describe_source(sources[name], name)
        )
        plan = resampling_plan(reference_shape, reference_affine, self.target_spacing)
        if math.prod(plan.shape) * len(self.modalities) * 4 > MAX_RESAMPLED_BYTES:
            raise ProcessorInputError(
                f"{describe_source(sources[self.reference_modality], self.reference_modality)}: resampling "
                f"{reference_shape} voxels to {self.target_spacing} mm would make a {plan.shape} grid; "
                "check the voxel size in the header"
            )
        stacked = apply_plan(stacked, plan, order=1)
        normalise_channels(stacked, self.modalities, self.intensity_windows)
        grid = StudyGrid(reference_shape, reference_affine, plan.shape, plan.affine)
        pixel_values = np.ascontiguousarray(stacked, dtype=np.float32)[None]
        return BatchFeature(
            {"pixel_values": pixel_values, "grid": grid}, tensor_type=return_tensors, skip_tensor_conversion=["grid"]
        )

    def restore(self, array: Any, grid: StudyGrid, order: int = 1) -> np.ndarray:
        """An array `(C, X, Y, Z)` or `(X, Y, Z)` on the preprocessed grid, on the study's original reference
        grid (order 0: nearest, labels; order 1: trilinear float32, probabilities)."""
        return restore_to_reference(array, grid.shape, grid.affine, grid.reference_shape, grid.reference_affine, order)

    def post_process_semantic_segmentation(self, labels: Any, grid: StudyGrid) -> nib.Nifti1Image:
        """A label mask `(X, Y, Z)` on the preprocessed grid as a uint8 NIfTI image on the reference grid."""
        restored = self.restore(labels, grid, order=0).astype(np.uint8)
        image = nib.Nifti1Image(restored, grid.reference_affine)
        image.header.set_data_dtype(np.uint8)
        return image


__all__ = ["MirrorUNetImageProcessor", "ProcessorInputError", "StudyGrid"]
