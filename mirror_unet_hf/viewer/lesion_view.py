"""The lesion table as the viewer lists it: rows, the study totals in one line, and where to move the
views to show a lesion. Measured on the final mask with the PET's SUVs (`mirror_unet_hf.lesions`)."""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np

from ..lesions import Lesion, LesionTable, lesion_table
from .study import FINAL_MASK, ViewerStudy

PET_LESION_COLUMNS = ("Lesion", "Volume (ml)", "SUVmax", "SUVmean", "TLG", "Centroid (mm)")
MRI_LESION_COLUMNS = ("Lesion", "Volume (ml)", "Centroid (mm)")


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
