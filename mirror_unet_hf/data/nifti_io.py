"""Reading, checking and atomically writing NIfTI volumes.

Every problem with a file (missing, truncated, not NIfTI, wrong dimensionality, NaN/Inf voxels, grids
that disagree) becomes a ``UserInputError`` whose one-line message names the study and the file.
"""

from __future__ import annotations

import gzip
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import UserInputError

NiftiSource = str | os.PathLike | bytes | nib.spatialimages.SpatialImage

# A corrupt file makes nibabel, gzip and zlib raise many unrelated types (WrapStructError, HeaderDataError,
# ImageFileError, EOFError, zlib.error, ValueError, OSError ...). Each ``except Exception`` below wraps one
# file operation only, so any exception there means "this file is unreadable".


def where(study: str | None, name: str) -> str:
    """Prefix for messages: ``"study X, file Y"`` (or just the file when no study is known)."""
    return f"study {study!r}, file {name!r}" if study else f"file {name!r}"


def load_nifti(source: NiftiSource, study: str | None = None, name: str | None = None) -> nib.Nifti1Image:
    """Open a NIfTI path, raw or gzipped NIfTI bytes, or pass a nibabel image through (data is read lazily).

    ``name`` is how the file is called in messages (defaults to the path).
    """
    if isinstance(source, nib.spatialimages.SpatialImage):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        return nifti_from_bytes(bytes(source), study, name or "<bytes>")
    path = Path(source)
    label = name or str(path)
    if not path.is_file():
        raise UserInputError(f"{where(study, label)}: file not found ({path})")
    try:
        image = nib.load(str(path))
    except Exception as error:  # noqa: BLE001
        raise UserInputError(f"{where(study, label)}: not a readable NIfTI file ({_first_line(error)})") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise UserInputError(f"{where(study, label)}: expected a NIfTI image, got {type(image).__name__}")
    return image


def nifti_from_bytes(data: bytes, study: str | None, name: str) -> nib.Nifti1Image:
    """Decode NIfTI bytes (gzipped or not) fully in memory; a truncated or foreign file raises ``UserInputError``."""
    try:
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        image = nib.Nifti1Image.from_bytes(raw)
    except Exception as error:  # noqa: BLE001
        raise UserInputError(f"{where(study, name)}: not a readable NIfTI file ({_first_line(error)})") from None
    return image


def read_bytes(path: Path, study: str | None, name: str | None = None) -> bytes:
    """The file's bytes, or ``UserInputError`` when it is missing."""
    if not path.is_file():
        raise UserInputError(f"{where(study, name or path.name)}: file not found ({path})")
    return path.read_bytes()


def read_array(image: nib.spatialimages.SpatialImage, study: str | None, name: str, dtype=np.float32) -> np.ndarray:
    """Voxel data with scaling applied; a data block shorter than the header promises raises ``UserInputError``."""
    try:
        return np.asanyarray(image.dataobj) if dtype is None else np.asarray(image.dataobj, dtype=dtype)
    except Exception as error:  # noqa: BLE001
        raise UserInputError(f"{where(study, name)}: voxel data cannot be read, file truncated? ({_first_line(error)})") from None


def require_3d(array: np.ndarray, study: str | None, name: str) -> np.ndarray:
    """Return the array as 3D; trailing singleton dimensions (X, Y, Z, 1) are dropped, anything else raises."""
    squeezed = array
    while squeezed.ndim > 3 and squeezed.shape[-1] == 1:
        squeezed = squeezed[..., 0]
    if squeezed.ndim != 3:
        raise UserInputError(f"{where(study, name)}: is {array.ndim}D with shape {tuple(array.shape)}; expected a 3D volume")
    return squeezed


def require_finite(array: np.ndarray, study: str | None, name: str) -> None:
    if not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise UserInputError(f"{where(study, name)}: has {bad} NaN/Inf voxels; expected finite values")


def require_label_values(array: np.ndarray, num_classes: int, study: str | None, name: str) -> np.ndarray:
    """Check a label volume holds integers 0..num_classes-1 and return it as uint8."""
    require_finite(array, study, name)
    if array.size and not np.array_equal(array, np.round(array)):
        raise UserInputError(f"{where(study, name)}: label has non-integer values; expected class indices")
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if low < 0 or high > num_classes - 1:
        raise UserInputError(
            f"{where(study, name)}: label values span {low:g}..{high:g}; expected 0..{num_classes - 1}"
        )
    return array.astype(np.uint8)


@dataclass(frozen=True)
class Grid:
    """A voxel grid: 3D shape and the voxel-to-world (RAS mm) affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    def world_corners(self) -> np.ndarray:
        """World coordinates (8, 3) of the outer voxel corners (voxel index -0.5 and n-0.5 on each axis)."""
        lows = np.full(3, -0.5)
        highs = np.asarray(self.shape, dtype=float) - 0.5
        corners = np.array([[x, y, z] for x in (lows[0], highs[0]) for y in (lows[1], highs[1]) for z in (lows[2], highs[2])])
        return corners @ self.affine[:3, :3].T + self.affine[:3, 3]


def grid_of(image: nib.spatialimages.SpatialImage) -> Grid:
    return Grid(tuple(int(n) for n in image.shape[:3]), np.asarray(image.affine, dtype=np.float64))


def same_grid(a: Grid, b: Grid) -> bool:
    """Same shape and affines equal to 1 % of the smallest voxel (float32 header noise is tolerated)."""
    if a.shape != b.shape:
        return False
    tolerance = 0.01 * min(min(a.spacing), min(b.spacing))
    return bool(np.allclose(a.affine, b.affine, rtol=0.0, atol=tolerance))


def grids_overlap(a: Grid, b: Grid) -> bool:
    """Whether the world-space bounding boxes of two grids share a positive volume."""
    ca, cb = a.world_corners(), b.world_corners()
    low = np.maximum(ca.min(0), cb.min(0))
    high = np.minimum(ca.max(0), cb.max(0))
    return bool(np.all(high > low))


def encode_nifti(image: nib.Nifti1Image, compresslevel: int = 1) -> bytes:
    """Gzipped NIfTI bytes; ``mtime=0`` so equal images give byte-identical files."""
    return gzip.compress(image.to_bytes(), compresslevel=compresslevel, mtime=0)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_nifti(image: nib.Nifti1Image, path: Path, compresslevel: int = 6) -> None:
    """Atomically write ``image`` as ``.nii.gz`` with deterministic bytes."""
    atomic_write_bytes(path, encode_nifti(image, compresslevel=compresslevel))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
