"""Synthetic studies written in exactly the real on-disk layouts of the registered tasks.

``make_phantoms(layout, out_dir, n, seed, shape=None)`` writes ``n`` studies that go through the same
builder as the real data; ``layout`` is a task name (``mirror_unet_hf.tasks``) whose task has a phantom
writer (``autopet``: FDG PET/CT, see ``phantoms/autopet.py``; ``brain_tumour``: MSD MRI, see
``phantoms/brain_tumour.py``; ``autopet3``: FDG and PSMA PET/CT in nnU-Net's layout, see ``phantoms/autopet3.py``
and ``phantoms/psma.py``). Same seed -> byte-identical files; studies are drawn from per-patient seeds,
so the first studies of ``n=4`` equal those of ``n=8``. The dataset folder is built next to its
destination and renamed into place (nothing half-written is ever visible).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...errors import UserInputError
from ...files import atomic_write_bytes

MIN_SIZE = 16
PHANTOM_MARKER = "PHANTOMS.txt"


def is_phantom_dataset(root: str | os.PathLike) -> bool:
    """Whether a dataset folder (FDG-PET-CT-Lesions / Task01_BrainTumour ...) was written by `make_phantoms`."""
    return (Path(root) / PHANTOM_MARKER).is_file()


def phantom_layouts() -> tuple[str, ...]:
    """Names of the registered tasks that have a phantom writer."""
    from ...tasks import list_tasks

    return tuple(task.name for task in list_tasks() if task.has_phantoms)


def _checked_shape(shape: Sequence[int] | None, default: tuple[int, int, int]) -> tuple[int, int, int]:
    shape = tuple(default) if shape is None else tuple(shape)
    if len(shape) != 3 or not all(isinstance(v, (int, np.integer)) and v >= MIN_SIZE for v in shape):
        raise UserInputError(f"shape must be three integers >= {MIN_SIZE}, got {shape!r}")
    return tuple(int(v) for v in shape)


def make_phantoms(
    layout: str,
    out_dir: str | os.PathLike,
    n: int,
    seed: int,
    shape: Sequence[int] | None = None,
) -> Path:
    """Write ``n`` phantom studies under ``out_dir`` in the real layout and return the dataset folder.

    ``layout``: ``"autopet"`` -> ``out_dir/FDG-PET-CT-Lesions/<patient>/<study>/{CTres,SUV,SEG}.nii.gz`` plus
    ``out_dir/Clinical Metadata FDG PET_CT Lesions.csv``; ``"brain_tumour"`` ->
    ``out_dir/Task01_BrainTumour/{dataset.json, imagesTr/BRATS_XXX.nii.gz, labelsTr/BRATS_XXX.nii.gz}``;
    ``"autopet3"`` -> ``out_dir/PSMA-FDG-PET-CT-Lesions/{imagesTr/<case>_000[01].nii.gz, labelsTr/<case>.nii.gz,
    dataset.json, splits_final.json}``.
    ``shape``: voxels per axis (default 96x96x80 / 64x80x64); anatomy scales with the field of view.
    Refuses to overwrite an existing dataset folder.
    """
    from ...tasks import list_tasks

    task = next((t for t in list_tasks() if t.name == layout and t.has_phantoms), None)
    if task is None:
        raise UserInputError(f"unknown phantom layout {layout!r}; expected {' or '.join(phantom_layouts())}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UserInputError(f"n must be a positive integer number of studies, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserInputError(f"seed must be a non-negative integer, got {seed!r}")
    shape = _checked_shape(shape, task.phantom_shape)
    out_dir = Path(out_dir)
    target = out_dir / task.folder
    if target.exists():
        raise UserInputError(f"{str(target)!r} already exists; choose an empty output folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{task.folder}.", suffix=".tmp", dir=out_dir))
    try:
        task.write_phantoms(out_dir, staging / task.folder, int(n), int(seed), shape)
        atomic_write_bytes(
            staging / task.folder / PHANTOM_MARKER,
            (
                f"Synthetic phantoms written by mirror_unet_hf.data.make_phantoms(layout={layout!r}, seed={seed}, "
                f"shape={shape}); not patient data.\n"
            ).encode(),
        )
        os.replace(staging / task.folder, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
