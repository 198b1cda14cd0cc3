"""One home for file conventions: NIfTI and pickle suffixes, atomic writes, and folder replacement.

Every writer in the package goes through ``atomic_write_bytes`` (temporary file in the target folder, fsync,
rename), so a reader never sees half a file and a killed process leaves at most a hidden ``.*.tmp``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import UserInputError

# Suffixes of NIfTI files, longest first so ``.nii.gz`` wins over ``.nii``.
NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Weight files whose loading runs pickled code: refused when loading and when pushing a checkpoint.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def nifti_stem(name: str) -> str | None:
    """``"case.nii.gz"`` -> ``"case"``; ``None`` for a name that is not ``<stem>.nii[.gz]``."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def is_pickle_file(name: str) -> bool:
    """Whether a file name has one of ``PICKLE_SUFFIXES`` (case-insensitive)."""
    return name.lower().endswith(PICKLE_SUFFIXES)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename: readers never see half a
    file, and a killed process leaves at most a hidden ``.*.tmp`` that is removed when it can be.

    A file system refusal (no space, permission, name too long, parent is a file) raises ``UserInputError``
    naming the path.
    """
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a short prefix keeps the temporary name within NAME_MAX for any name that is itself valid
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name[:40]}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(temporary, path)
        temporary = None
    except OSError as error:
        raise UserInputError(f"cannot write {path}: {error.strerror or _first_line(error)}") from None
    finally:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``atomic_write_bytes`` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def json_text(payload: Any) -> str:
    """Strict JSON (NaN and infinity refused), indented, with a final newline."""
    return json.dumps(payload, indent=2, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike, payload: Any) -> None:
    """``atomic_write_bytes`` of ``json_text(payload)``."""
    atomic_write_text(path, json_text(payload))


def replace_folder(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move a fully written folder into place; the previous one goes only after the new one is there."""
    staging, target = Path(staging), Path(target)
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    if old.exists():
        shutil.rmtree(old)
