"""Lesion table of a final PET mask: per-lesion volume, SUV statistics, TLG, world centroid and bounding box,
plus a per-study summary (lesion count, total metabolic tumour volume, total TLG, SUVmax).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import UserInputError
from .evaluation import check_outputs_free, write_csv, write_json
from .metrics import label_components

LESION_COLUMNS = (
    "lesion_id",
    "voxel_count",
    "volume_ml",
    "suv_max",
    "suv_mean",
    "tlg",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "bbox_min_i",
    "bbox_min_j",
    "bbox_min_k",
    "bbox_max_i",
    "bbox_max_j",
    "bbox_max_k",
)


@dataclass(frozen=True)
class Lesion:
    """One connected component (18-connectivity) of the mask."""

    lesion_id: int
    """1 = the largest lesion; ids follow decreasing volume (ties: lower bounding-box corner first)."""
    voxel_count: int
    volume_ml: float
    suv_max: float
    suv_mean: float
    tlg: float
    """Total lesion glycolysis = SUVmean × volume (ml)."""
    centroid_mm: tuple[float, float, float]
    """Centre of mass of the voxel centres in world coordinates (the affine's space, RAS+ for NIfTI), mm."""
    bbox_min: tuple[int, int, int]
    """Smallest voxel index (i, j, k) of the lesion, inclusive."""
    bbox_max: tuple[int, int, int]
    """Largest voxel index (i, j, k) of the lesion, inclusive."""

    def as_row(self) -> dict[str, float | int]:
        return dict(
            zip(
                LESION_COLUMNS,
                (
                    self.lesion_id,
                    self.voxel_count,
                    self.volume_ml,
                    self.suv_max,
                    self.suv_mean,
                    self.tlg,
                    *self.centroid_mm,
                    *self.bbox_min,
                    *self.bbox_max,
                ),
            )
        )


@dataclass(frozen=True)
class LesionTable:
    """All lesions of one study and the study summary."""

    lesions: list[Lesion]
    voxel_volume_ml: float

    @property
    def lesion_count(self) -> int:
        return len(self.lesions)

    @property
    def total_mtv_ml(self) -> float:
        """Metabolic tumour volume: the summed volume of all lesions."""
        return float(sum(lesion.volume_ml for lesion in self.lesions))

    @property
    def total_tlg(self) -> float:
        return float(sum(lesion.tlg for lesion in self.lesions))

    @property
    def suv_max(self) -> float | None:
        """Highest SUV inside any lesion; None without lesions."""
        return max((lesion.suv_max for lesion in self.lesions), default=None)

    def summary(self) -> dict[str, float | int | None]:
        return {
            "lesion_count": self.lesion_count,
            "total_mtv_ml": self.total_mtv_ml,
            "total_tlg": self.total_tlg,
            "suv_max": self.suv_max,
            "voxel_volume_ml": self.voxel_volume_ml,
        }


def _check_affine(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise UserInputError(f"affine has shape {affine.shape}; expected a finite 4x4 voxel-to-world matrix")
    if abs(np.linalg.det(affine[:3, :3])) == 0:
        raise UserInputError("affine is singular (zero voxel volume); expected a 4x4 voxel-to-world matrix")
    return affine


def lesion_table(mask: np.ndarray, suv: np.ndarray, affine: np.ndarray) -> LesionTable:
    """Measure every lesion of a final mask.

    Args:
        mask: final lesion mask ``(X, Y, Z)``; any non-zero voxel is lesion.
        suv: PET in SUV on the same grid as ``mask``.
        affine: 4x4 voxel-to-world matrix of that grid (mm); voxel volume = |det(affine[:3, :3])| / 1000 ml.

    Lesions are the 18-connected components of the mask (as in the AutoPET metrics). One labelling pass,
    then bincount over the foreground voxels and ``ndimage.find_objects`` for the bounding boxes.
    """
    mask, suv = np.asarray(mask), np.asarray(suv)
    if mask.shape != suv.shape or mask.ndim != 3:
        raise UserInputError(
            f"mask shape {mask.shape} and SUV shape {suv.shape} differ or are not 3D; expected one 3D grid"
        )
    affine = _check_affine(affine)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0

    labels, n = label_components(mask != 0)
    if n == 0:
        return LesionTable(lesions=[], voxel_volume_ml=voxel_ml)
    coords = np.nonzero(labels)
    ids = labels[coords].astype(np.intp)
    values = suv[coords].astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise UserInputError("SUV image has non-finite values (NaN/inf) inside the mask; expected finite SUVs")

    counts = np.bincount(ids, minlength=n + 1)
    suv_sum = np.bincount(ids, weights=values, minlength=n + 1)
    suv_max = np.full(n + 1, -np.inf)
    np.maximum.at(suv_max, ids, values)
    centroid_vox = np.stack([np.bincount(ids, weights=axis, minlength=n + 1) for axis in coords], axis=1)
    centroid_vox[1:] /= counts[1:, None]
    centroid_world = centroid_vox @ affine[:3, :3].T + affine[:3, 3]
    boxes = ndimage.find_objects(labels)

    lesions = []
    for label in range(1, n + 1):
        box = boxes[label - 1]
        volume = counts[label] * voxel_ml
        mean = suv_sum[label] / counts[label]
        lesions.append(
            Lesion(
                lesion_id=0,
                voxel_count=int(counts[label]),
                volume_ml=float(volume),
                suv_max=float(suv_max[label]),
                suv_mean=float(mean),
                tlg=float(mean * volume),
                centroid_mm=tuple(float(v) for v in centroid_world[label]),
                bbox_min=tuple(int(axis.start) for axis in box),
                bbox_max=tuple(int(axis.stop) - 1 for axis in box),
            )
        )
    lesions.sort(key=lambda lesion: (-lesion.voxel_count, lesion.bbox_min))
    lesions = [dataclasses.replace(lesion, lesion_id=rank) for rank, lesion in enumerate(lesions, start=1)]
    return LesionTable(lesions=lesions, voxel_volume_ml=voxel_ml)


def write_lesion_table(
    table: LesionTable, csv_path: str | Path, json_path: str | Path | None = None, overwrite: bool = False
) -> None:
    """Write the lesions as CSV (one row per lesion) and optionally JSON (``{"summary", "lesions"}``).

    Each file is written to a temporary name in its folder and renamed, so no half-written file remains.
    Existing files are refused unless ``overwrite``.
    """
    paths = [Path(csv_path)] + ([Path(json_path)] if json_path is not None else [])
    check_outputs_free(paths, overwrite)
    rows = [lesion.as_row() for lesion in table.lesions]
    write_csv(rows, LESION_COLUMNS, paths[0], overwrite)
    if json_path is not None:
        write_json({"summary": table.summary(), "lesions": rows}, paths[1], overwrite)
