"""Reading, checking and atomically writing NIfTI volumes.

Every problem with a file (missing, truncated, not NIfTI, wrong dimensionality, NaN/Inf voxels, grids
that disagree) becomes a ``UserInputError`` whose one-line message names the study and the file.

Reading is defensive because one bad study in an overnight batch must not take the process down:
the header is parsed and checked before any voxel is read. A header whose voxel data would exceed
``max_nifti_bytes()`` (4 GiB once read as at least 4 bytes per voxel; environment variable
``MIRROR_UNET_MAX_NIFTI_BYTES`` to change it), that declares zero or negative dimensions or voxel
sizes, an unsupported voxel type (complex, RGB) or an offset inside the header is refused before
allocating. A gzipped file is inflated incrementally, so a truncated file or one that inflates to more
than its header says (a gzip bomb) costs memory in proportion to what it really holds, never to what
its header claims; the gzip checksum is verified.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import UserInputError
from ..files import atomic_write_bytes

NiftiSource = str | os.PathLike | bytes | nib.spatialimages.SpatialImage

MAX_BYTES_ENV = "MIRROR_UNET_MAX_NIFTI_BYTES"
DEFAULT_MAX_BYTES = 4 * 1024**3
# Voxel sizes (mm) outside this range are header corruption, not images: a 1e-9 or 1e9 mm voxel would
# make resampling to the training spacing collapse the volume or blow it up.
SPACING_RANGE_MM = (1e-4, 1e4)
# |det| / product of the axis lengths of the affine's 3x3 part below this: (almost) parallel voxel axes.
MIN_AXIS_INDEPENDENCE = 1e-3
GZIP_MAGIC = b"\x1f\x8b"
# sizeof_hdr -> (header class, image class, single-file magic)
_FORMATS = {
    348: (nib.Nifti1Header, nib.Nifti1Image, b"n+1"),
    540: (nib.Nifti2Header, nib.Nifti2Image, b"n+2"),
}
_HEADER_PEEK = 544  # the larger header plus the 4-byte extension flag
_CHUNK = 1 << 24

# A corrupt file makes nibabel, gzip and zlib raise many unrelated types (WrapStructError, HeaderDataError,
# ImageFileError, EOFError, zlib.error, ValueError, OSError ...). Each ``except Exception`` below wraps one
# file operation only, so any exception there means "this file is unreadable".


def where(study: str | None, name: str) -> str:
    """Prefix for messages: ``"study X, file Y"`` (or just the file when no study is known)."""
    return f"study {study!r}, file {name!r}" if study else f"file {name!r}"


def max_nifti_bytes() -> int:
    """The largest voxel data (bytes, as read) a header may declare: ``MIRROR_UNET_MAX_NIFTI_BYTES`` or 4 GiB."""
    value = os.environ.get(MAX_BYTES_ENV)
    if value is None or not value.strip():
        return DEFAULT_MAX_BYTES
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise UserInputError(f"environment variable {MAX_BYTES_ENV}={value!r}; expected a positive number of bytes")
    return limit


def load_nifti(source: NiftiSource, study: str | None = None, name: str | None = None) -> nib.Nifti1Image:
    """Open a NIfTI path, raw or gzipped NIfTI bytes, or check and pass a nibabel image through.

    The header is checked before any voxel is read (see the module docstring). The file is inflated
    into memory; voxels are converted when read (``read_array``). ``name`` is how the file is called
    in messages (defaults to the path).
    """
    if isinstance(source, nib.spatialimages.SpatialImage):
        check_image(source, study, name or "<image>")
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        return nifti_from_bytes(bytes(source), study, name or "<bytes>")
    path = Path(source)
    label = name or str(path)
    return nifti_from_bytes(read_bytes(path, study, label), study, label)


def nifti_from_bytes(data: bytes, study: str | None, name: str) -> nib.Nifti1Image:
    """Decode single-file NIfTI-1 or NIfTI-2 bytes, gzipped or not; any bad file raises ``UserInputError``."""
    limit = max_nifti_bytes()
    compressed = data[:2] == GZIP_MAGIC
    inflater = _Inflater(data) if compressed else None
    try:
        head = inflater.read(_HEADER_PEEK) if compressed else data[:_HEADER_PEEK]
        header, image_class = _parse_header(head, study, name)
        needed = check_header(header, study, name, limit)
        if compressed:
            rest = inflater.read(needed - len(head)) if needed > len(head) else b""
            raw = head + rest if rest else head
            del rest
            inflater.drain(limit)
        else:
            raw = data  # nibabel reads from the offset on; trailing bytes are ignored
    except EOFError:
        raise UserInputError(
            f"{where(study, name)}: not a readable NIfTI file: file truncated (the gzip data ends before its end marker)"
        ) from None
    except zlib.error as error:
        raise UserInputError(
            f"{where(study, name)}: not a readable NIfTI file (corrupt gzip data: {_first_line(error)})"
        ) from None
    if len(raw) < needed:
        raise UserInputError(
            f"{where(study, name)}: file truncated: its header declares {_size(needed)} of header and voxel data, "
            f"the file holds {_size(len(raw))}"
        )
    try:
        with nib.imageglobals.LoggingOutputSuppressor():  # nibabel logs header fixes to stderr
            image = image_class.from_bytes(raw)
    except Exception as error:
        raise UserInputError(f"{where(study, name)}: not a readable NIfTI file ({_first_line(error)})") from None
    proxy = image.dataobj
    if getattr(proxy, "offset", 0) + _stored_bytes(header) > len(raw):
        raise UserInputError(
            f"{where(study, name)}: file truncated: voxel data ends before the {proxy.shape} voxels its header declares"
        )
    check_image(image, study, name)
    return image


def check_header(header, study: str | None, name: str, limit: int | None = None) -> int:
    """Refuse a header that cannot describe a sane image; returns the bytes the file must hold (header + voxels).

    Checks, before anything is allocated: 1..7 dimensions, every axis >= 1 voxel, an integer or
    floating-point voxel type, voxel sizes (pixdim) within ``SPACING_RANGE_MM``, voxel data within
    ``limit`` (default ``max_nifti_bytes()``) once read, and a data offset past the header.
    """
    limit = max_nifti_bytes() if limit is None else limit
    label = where(study, name)
    dims = [int(d) for d in header["dim"]]
    if not 1 <= dims[0] <= 7:
        raise UserInputError(
            f"{label}: header says {dims[0]} dimensions (dim[0]); expected 1..7, is the header corrupt?"
        )
    shape = tuple(dims[1 : dims[0] + 1])
    if any(n < 1 for n in shape):
        raise UserInputError(f"{label}: header shape {shape} has an axis of length < 1; expected positive dimensions")
    try:
        dtype = header.get_data_dtype()
    except Exception:
        raise UserInputError(
            f"{label}: header datatype code {int(header['datatype'])} is not a NIfTI voxel type"
        ) from None
    if dtype.kind not in "iuf" or dtype.fields:
        kind = "RGB" if dtype.fields else {"c": "complex"}.get(dtype.kind, str(dtype))
        raise UserInputError(
            f"{label}: voxel type {kind} ({dtype}) is not supported; expected integer or floating-point voxels"
        )
    spacing = [float(v) for v in header["pixdim"][1 : 1 + min(len(shape), 3)]]
    low, high = SPACING_RANGE_MM
    if not all(math.isfinite(v) and low <= v <= high for v in spacing):
        raise UserInputError(
            f"{label}: header voxel size (pixdim) {_numbers(spacing)}; expected positive sizes of {low:g}..{high:g} mm"
        )
    voxels = math.prod(shape)
    as_read = voxels * max(dtype.itemsize, 4)
    if as_read > limit:
        raise UserInputError(
            f"{label}: header declares {'x'.join(map(str, shape))} voxels of {dtype} ({_size(as_read)} once read), over "
            f"the {_size(limit)} limit; the header is corrupt or the image too large ({MAX_BYTES_ENV} raises the limit)"
        )
    offset = float(header["vox_offset"])
    first = int(header["sizeof_hdr"]) + 4  # the header and its 4-byte extension flag come first
    if not math.isfinite(offset) or not first <= offset <= first + limit:
        raise UserInputError(
            f"{label}: header data offset (vox_offset) {offset:g}; expected {first} or more (after the header), "
            f"within {_size(limit)}"
        )
    return int(offset) + voxels * dtype.itemsize


def check_image(image: nib.spatialimages.SpatialImage, study: str | None, name: str) -> None:
    """Refuse an image whose voxel type is not integer/float or whose affine is non-finite or degenerate."""
    label = where(study, name)
    dtype = image.get_data_dtype()
    if dtype.kind not in "iuf" or dtype.fields:
        raise UserInputError(f"{label}: voxel type {dtype} is not supported; expected integer or floating-point voxels")
    if image.affine is None:
        raise UserInputError(f"{label}: image has no voxel-to-world affine; expected a 4x4 matrix")
    affine = np.asarray(image.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise UserInputError(
            f"{label}: voxel-to-world affine (sform/qform) has NaN/Inf entries; expected a finite 4x4 matrix"
        )
    sizes = np.linalg.norm(affine[:3, :3], axis=0)
    low, high = SPACING_RANGE_MM
    if not np.all((sizes >= low) & (sizes <= high)):
        raise UserInputError(
            f"{label}: voxel-to-world affine gives voxel sizes {_numbers(sizes)} mm; expected {low:g}..{high:g} mm "
            "(zero or absurd spacing in the sform/qform)"
        )
    if abs(float(np.linalg.det(affine[:3, :3]))) < MIN_AXIS_INDEPENDENCE * float(np.prod(sizes)):
        raise UserInputError(
            f"{label}: voxel-to-world affine is singular (voxel axes parallel); expected an invertible matrix"
        )


def read_bytes(path: Path, study: str | None, name: str | None = None) -> bytes:
    """The file's bytes; ``UserInputError`` when it is missing, unreadable or larger than any sane NIfTI."""
    path = Path(path)
    label = where(study, name or path.name)
    try:
        if not path.is_file():
            raise UserInputError(f"{label}: file not found ({path})")
        size = path.stat().st_size
        limit = max_nifti_bytes()
        if size > limit + _HEADER_PEEK + 2**20:  # compressed or not, a file never holds much more than its voxels
            raise UserInputError(
                f"{label}: file is {_size(size)}, over the {_size(limit)} limit ({MAX_BYTES_ENV} raises it)"
            )
        return path.read_bytes()
    except OSError as error:
        raise UserInputError(f"{label}: cannot read ({error.strerror or _first_line(error)})") from None


def read_array(image: nib.spatialimages.SpatialImage, study: str | None, name: str, dtype=np.float32) -> np.ndarray:
    """Voxel data with scaling applied; a data block shorter than the header promises raises ``UserInputError``."""
    try:
        with np.errstate(
            over="ignore", invalid="ignore"
        ):  # values beyond float32 become Inf: require_finite names them
            return np.asanyarray(image.dataobj) if dtype is None else np.asarray(image.dataobj, dtype=dtype)
    except MemoryError:
        raise UserInputError(f"{where(study, name)}: not enough memory to read {image.shape} voxels") from None
    except Exception as error:
        raise UserInputError(
            f"{where(study, name)}: voxel data cannot be read, file truncated? ({_first_line(error)})"
        ) from None


def require_3d(array: np.ndarray, study: str | None, name: str) -> np.ndarray:
    """Return the array as 3D; trailing singleton dimensions (X, Y, Z, 1) are dropped, anything else raises."""
    squeezed = array
    while squeezed.ndim > 3 and squeezed.shape[-1] == 1:
        squeezed = squeezed[..., 0]
    if squeezed.ndim != 3:
        raise UserInputError(
            f"{where(study, name)}: is {array.ndim}D with shape {tuple(array.shape)}; expected a 3D volume"
        )
    return squeezed


def require_finite(array: np.ndarray, study: str | None, name: str) -> None:
    if not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise UserInputError(
            f"{where(study, name)}: has {bad} NaN/Inf voxels (or values beyond float32); expected finite values"
        )


def require_label_values(array: np.ndarray, num_classes: int | None, study: str | None, name: str) -> np.ndarray:
    """Check a label volume holds integers 0..num_classes-1 (any non-negative integer when None); returns uint8
    (int64 when values exceed 255)."""
    require_finite(array, study, name)
    if array.size and not np.array_equal(array, np.round(array)):
        raise UserInputError(f"{where(study, name)}: label has non-integer values; expected class indices")
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    expected = "0 or more" if num_classes is None else f"0..{num_classes - 1}"
    if low < 0 or (num_classes is not None and high > num_classes - 1):
        raise UserInputError(f"{where(study, name)}: label values span {low:g}..{high:g}; expected {expected}")
    return array.astype(np.uint8 if high <= 255 else np.int64)


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
        corners = np.array(
            [[x, y, z] for x in (lows[0], highs[0]) for y in (lows[1], highs[1]) for z in (lows[2], highs[2])]
        )
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


def save_nifti(image: nib.Nifti1Image, path: Path, compresslevel: int = 6) -> None:
    """Atomically write ``image`` as ``.nii.gz`` with deterministic bytes."""
    atomic_write_bytes(path, encode_nifti(image, compresslevel=compresslevel))


# ---------------------------------------------------------------------------------------------- helpers


class _Inflater:
    """Incremental gunzip of in-memory bytes (several members allowed): output is produced on demand, so
    what a header claims never decides how much memory inflating takes."""

    def __init__(self, data: bytes):
        self._pending = data
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._ended = False
        self._produced = 0

    def read(self, size: int) -> bytes:
        parts, missing = [], size
        while missing > 0 and not self._ended:
            chunk = self._inflate.decompress(self._pending, min(missing, _CHUNK))
            self._pending = self._inflate.unconsumed_tail
            parts.append(chunk)
            missing -= len(chunk)
            self._produced += len(chunk)
            if self._inflate.eof:
                rest = self._inflate.unused_data
                if rest[:2] == GZIP_MAGIC:  # another gzip member follows
                    self._inflate, self._pending = zlib.decompressobj(16 + zlib.MAX_WBITS), rest
                else:
                    self._ended = True  # trailing bytes after the last member are ignored, as gzip does
            elif not chunk and not self._pending:
                raise EOFError("compressed file ended before the end-of-stream marker")
        return b"".join(parts)

    def drain(self, limit: int) -> None:
        """Inflate (and discard) the rest, which verifies the checksum; more than ``limit`` bytes is refused."""
        while not self._ended:
            self.read(_CHUNK)
            if self._produced > limit + _HEADER_PEEK + _CHUNK:
                raise zlib.error(f"inflates to more than {_size(limit)} (a gzip bomb?)")


def _parse_header(head: bytes, study: str | None, name: str):
    """The NIfTI-1 or NIfTI-2 header at the start of ``head`` (unchecked, unfixed), and the image class."""
    if len(head) < min(_FORMATS):
        raise UserInputError(
            f"{where(study, name)}: not a readable NIfTI file ({len(head)} bytes, shorter than a NIfTI header)"
        )
    for size, (header_class, image_class, magic) in _FORMATS.items():
        for order in "<>":
            if struct.unpack(f"{order}i", head[:4])[0] != size or len(head) < size:
                continue
            try:
                header = header_class(head[:size], endianness=order, check=False)
            except Exception as error:
                raise UserInputError(
                    f"{where(study, name)}: not a readable NIfTI file ({_first_line(error)})"
                ) from None
            if header["magic"].item() != magic:
                raise UserInputError(
                    f"{where(study, name)}: not a single-file NIfTI (magic {header['magic'].item()!r}, expected {magic!r}); "
                    "convert .hdr/.img pairs to .nii.gz"
                )
            return header, image_class
    raise UserInputError(f"{where(study, name)}: not a readable NIfTI file (no NIfTI-1 or NIfTI-2 header at the start)")


def _stored_bytes(header) -> int:
    dims = [int(d) for d in header["dim"]]
    return math.prod(dims[1 : dims[0] + 1]) * header.get_data_dtype().itemsize


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _numbers(values) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
