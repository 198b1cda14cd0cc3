"""Helpers shared by the fuzz and reliability tests: budget, case counting, crafted NIfTI bytes, outcome checks.

Import explicitly (``from conftest_fuzz import ...``). The hypothesis budget is ``MIRROR_UNET_FUZZ_EXAMPLES``
examples per property (default 25; e.g. ``MIRROR_UNET_FUZZ_EXAMPLES=2000`` for a heavy run). Every input a
test tries is counted per target; at the end of the session the counts are printed as one
``fuzz cases tried: ...`` line and written to ``<pytest base temp>/fuzz_counts.json``.
"""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from mirror_unet_hf.errors import UserInputError

FUZZ_EXAMPLES = int(os.environ.get("MIRROR_UNET_FUZZ_EXAMPLES", "25"))
# database=None: no .hypothesis/ folder in the checkout; deadline=None: the shared CPU is noisy.
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])

_COUNTS: Counter = Counter()
_REPORTED: list[bool] = []


def tried(target: str, n: int = 1) -> None:
    """Count ``n`` inputs given to ``target`` (reported at the end of the session)."""
    _COUNTS[target] += n


@pytest.fixture(scope="session", autouse=True)
def fuzz_report(request, tmp_path_factory):
    """Session fixture (import it into a test module): prints and writes the per-target case counts at the end."""
    yield _COUNTS
    if not _COUNTS or _REPORTED:  # imported into several modules: report once, after every test
        return
    _REPORTED.append(True)
    path = tmp_path_factory.getbasetemp() / "fuzz_counts.json"
    payload = {
        "examples_per_property": FUZZ_EXAMPLES,
        "cases": dict(sorted(_COUNTS.items())),
        "total": sum(_COUNTS.values()),
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    line = f"fuzz cases tried ({FUZZ_EXAMPLES} examples/property): " + ", ".join(
        f"{k} {v}" for k, v in sorted(_COUNTS.items())
    )
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
            reporter.write_line("")
            reporter.write_line(f"{line}; total {payload['total']} -> {path}")


# ------------------------------------------------------------------------------------------ crafted files


def nifti_bytes(data: np.ndarray, affine=AFFINE, gz: bool = True, nifti2: bool = False, **fields) -> bytes:
    """A single-file NIfTI of ``data`` with header ``fields`` set raw (no nibabel fix-ups), gzipped or not."""
    image_class = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    image = image_class(
        data, affine, dtype=data.dtype if data.dtype.kind in "iu" and data.dtype.itemsize == 8 else None
    )
    raw = bytearray(image.to_bytes())
    header = image.header.__class__(bytes(raw[: image.header.sizeof_hdr]), check=False)
    for key, value in fields.items():
        header[key] = value
    raw[: header.sizeof_hdr] = header.binaryblock
    return gzip.compress(bytes(raw), mtime=0) if gz else bytes(raw)


def with_sform(data: np.ndarray, affine: np.ndarray, gz: bool = True) -> bytes:
    """A NIfTI whose sform is ``affine`` written raw (nibabel refuses to build singular or non-finite ones)."""
    rows = np.asarray(affine, dtype=np.float32)
    return nifti_bytes(data, gz=gz, srow_x=rows[0], srow_y=rows[1], srow_z=rows[2], sform_code=1, qform_code=0)


def huge_header(shape=(30000, 30000, 30000), gz: bool = True) -> bytes:
    """A header declaring ``shape`` float32 voxels followed by a few bytes of data."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    header["magic"] = b"n+1"
    raw = header.binaryblock + b"\0" * 4 + b"\0" * 1024
    return gzip.compress(raw, mtime=0) if gz else raw


def small_volume(shape=(12, 10, 8), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32) * 10


# ------------------------------------------------------------------------------------------ outcome checks


def user_error_or_result(target: str, function, *args, **kwargs):
    """Call ``function`` on one fuzz input for ``target`` (counted, with how many were refused): a result or a
    one-line, non-empty ``UserInputError`` is fine; any other exception fails the test."""
    tried(target)
    try:
        return function(*args, **kwargs)
    except UserInputError as error:
        tried(f"{target}: refused")
        message = str(error)
        assert message.strip() and "\n" not in message.strip(), f"user error must be one line: {message!r}"
        return error


def leftovers(folder: Path) -> list[str]:
    """Temporary or hidden files left in ``folder`` (recursively): what an interrupted or failed write leaves."""
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")
    )


SHAPE = (12, 10, 8)
VALID = small_volume(SHAPE)
PET = nifti_bytes(VALID)


def random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def valid_raw() -> bytes:
    return nifti_bytes(VALID, gz=False)


def _crc_flipped() -> bytes:
    data = bytearray(PET)
    data[-6] ^= 0xFF  # inside the CRC32 trailer
    return bytes(data)


def _axes(columns) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(columns, dtype=float).T
    return affine


# ------------------------------------------------------------------------------------------ catalogue

# name -> (file bytes, fragment of the expected message); every one must be refused when read
UNREADABLE = {
    "empty file": (b"", "shorter than a NIfTI header"),
    "random bytes": (random_bytes(4096), "not a readable NIfTI"),
    "gzipped random bytes": (gzip.compress(random_bytes(4096)), "not a readable NIfTI"),
    "gzip cut in the data": (PET[: len(PET) // 2], "truncated"),
    "gzip cut in the header": (PET[:40], "truncated"),
    "gzip checksum wrong": (_crc_flipped(), "corrupt gzip data"),
    "uncompressed, data cut": (valid_raw()[:-100], "truncated"),
    "header 30000^3, gzipped": (huge_header(), "over the"),
    "header 30000^3, uncompressed": (huge_header(gz=False), "over the"),
    "header 900^3 (within limit), 1 KiB of data": (huge_header((900, 900, 900)), "truncated"),
    "complex voxels": (nifti_bytes(VALID.astype(np.complex64)), "complex"),
    "RGB voxels": (nifti_bytes(np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])), "RGB"),
    "unknown datatype code": (nifti_bytes(VALID, datatype=999), "datatype code"),
    "zero-length axis": (nifti_bytes(VALID, dim=[3, 0, 10, 8, 1, 1, 1, 1]), "axis of length"),
    "negative axis": (nifti_bytes(VALID, dim=[3, -12, 10, 8, 1, 1, 1, 1]), "axis of length"),
    "9 dimensions": (nifti_bytes(VALID, dim=[9, 12, 10, 8, 1, 1, 1, 1]), "dimensions"),
    "zero pixdim": (nifti_bytes(VALID, pixdim=[1, 0, 2, 3, 1, 1, 1, 1]), "pixdim"),
    "negative pixdim": (nifti_bytes(VALID, pixdim=[1, -2, 2, 3, 1, 1, 1, 1]), "pixdim"),
    "NaN pixdim": (nifti_bytes(VALID, pixdim=[1, np.nan, 2, 3, 1, 1, 1, 1]), "pixdim"),
    "singular affine": (with_sform(VALID, np.diag([2.0, 0.0, 3.0, 1.0])), "voxel sizes"),
    "parallel axes": (with_sform(VALID, _axes([[2, 0, 0], [2, 0.001, 0], [0, 0, 3]])), "singular"),
    "NaN affine": (with_sform(VALID, np.diag([np.nan, 2.0, 3.0, 1.0])), "NaN/Inf"),
    "Inf affine": (with_sform(VALID, np.diag([2.0, np.inf, 3.0, 1.0])), "NaN/Inf"),
    "data offset inside the header": (nifti_bytes(VALID, vox_offset=100), "vox_offset"),
    "data offset 1e20": (nifti_bytes(VALID, vox_offset=1e20), "vox_offset"),
    "analyze pair header": (nifti_bytes(VALID, magic=b"ni1"), "single-file"),
}

# name -> (file bytes, fragment): readable, but not a usable 3D image
UNUSABLE = {
    "NaN voxels": (nifti_bytes(np.where(VALID > 9, np.nan, VALID).astype(np.float32)), "NaN/Inf"),
    "Inf voxels": (nifti_bytes(np.where(VALID > 9, np.inf, VALID).astype(np.float32)), "NaN/Inf"),
    "float64 beyond float32": (nifti_bytes(np.full(SHAPE, 1e300)), "NaN/Inf"),
    "2D": (nifti_bytes(VALID[:, :, 0]), "expected a 3D volume"),
    "4D with 2 volumes": (nifti_bytes(np.stack([VALID, VALID], -1)), "expected a 3D volume"),
    "5D": (nifti_bytes(VALID[..., None, None].repeat(2, 4)), "expected a 3D volume"),
    "another grid, 10 m away": (
        with_sform(VALID, AFFINE + np.pad(np.array([[0, 0, 0, 10000.0]]), ((0, 3), (0, 0)))),
        "does not overlap",
    ),
}
# the reference modality (PET) decides the grid: 1 m voxels resampled to 2x2x3 mm would be 500x larger per axis
HUGE_VOXELS = with_sform(VALID, np.diag([1000.0, 1000.0, 1000.0, 1.0]))
