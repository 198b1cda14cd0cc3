"""The file of one prepared study: compact dtypes, 32³ compressed blocks, in a safetensors container.

One ``.safetensors`` file per study (an 8-byte header length, a JSON header, then the tensors' bytes):

- ``<modality>.blocks`` (uint8) and ``<modality>.offsets`` (int64, one more than there are blocks): the channel
  on the whole preprocessed grid, cut into ``BLOCK``³ blocks (C order of the block grid); each block's bytes are
  shuffled (every value's first byte, then every second byte) and zlib-compressed (level 1), and an all-zero
  block is stored as nothing. Block ``i`` is ``blocks[offsets[i]:offsets[i + 1]]``.
- ``label.index`` (int64): flat indices (C order, whole grid) of the label's non-zero voxels; ``label.value``
  (uint8): their values. A lesion mask is a few thousand voxels, so this is a few kB.
- ``__metadata__["mirror_unet"]``: JSON: the grid (shape, spacing, affine, the reference grid), each channel's
  stored dtype and whether it is stored ``raw`` (normalised when read) or ``normalised`` (z-scored), the body
  box and which channels defined it, and the storage settings the file was made with.

Dtypes: a channel normalised when read keeps its resampled values (CT in HU rounded to int16, |error| <= 0.5 HU;
others float16, relative error <= 2**-11); z-scored channels are stored z-scored as float16. A channel whose
values do not fit falls back to float16 or float32, and the file says which.

Why blocks and not a cropped ``.npy``: whole-volume validation feeds the network the CT outside the PET's body
box too (air, table), so the file keeps the whole grid; zero blocks (the PET outside the body) cost nothing, the
rest compresses to about a seventh of float32, and a training patch reads only the blocks it covers (a 96³
patch: at most 4³ blocks of 64 kB per channel, read through a memory map).
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from safetensors.numpy import save

from ..errors import UserInputError
from ..files import atomic_write_bytes

FORMAT_VERSION = 1
BLOCK = 32
PARALLEL_BLOCKS = 256  # regions of at least this many blocks are decoded by a thread pool
MEMO_BLOCKS = 256  # decoded blocks a channel keeps for the next patch (16 MiB of int16)
METADATA_KEY = "mirror_unet"
# modalities in Hounsfield units: a scanner writes integers, so rounding to int16 loses at most 0.5 HU
HOUNSFIELD_MODALITIES = frozenset({"ct"})
_SAFETENSORS_DTYPES = {"U8": np.uint8, "I16": np.int16, "I64": np.int64, "F16": np.float16, "F32": np.float32}


def compact_dtype(modality: str, values: np.ndarray, raw: bool) -> np.dtype:
    """The smallest dtype that keeps a channel exact enough: int16 for raw HU, float16, or float32 when float16
    would overflow."""
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if raw and modality in HOUNSFIELD_MODALITIES and low >= -32768 and high <= 32767:
        return np.dtype(np.int16)
    finite = max(abs(low), abs(high)) <= float(np.finfo(np.float16).max)
    return np.dtype(np.float16 if finite else np.float32)


def quantise(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` (float32) in ``dtype``: integers rounded to the nearest, floats cast."""
    if np.issubdtype(dtype, np.integer):
        return np.rint(values).astype(dtype)
    return values.astype(dtype)


def block_grid(shape: Sequence[int], block: int = BLOCK) -> tuple[int, int, int]:
    """Blocks per axis."""
    return tuple(-(-int(n) // block) for n in shape)


def block_slices(index: Sequence[int], shape: Sequence[int], block: int = BLOCK) -> tuple[slice, slice, slice]:
    """The voxels of block ``index`` (a block-grid position)."""
    return tuple(slice(k * block, min((k + 1) * block, int(n))) for k, n in zip(index, shape))


def encode_channel(values: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """``(blocks, offsets)`` of one 3D channel (see the module docstring)."""
    pieces = []
    for index in itertools.product(*(range(n) for n in block_grid(values.shape, block))):
        part = np.ascontiguousarray(values[block_slices(index, values.shape, block)])
        if not part.any():
            pieces.append(b"")
            continue
        shuffled = part.view(np.uint8).reshape(-1, part.itemsize).T.tobytes()
        pieces.append(zlib.compress(shuffled, 1))
    offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(piece) for piece in pieces])
    return np.frombuffer(b"".join(pieces), dtype=np.uint8), offsets


def encode_label(label: np.ndarray | None) -> dict[str, np.ndarray]:
    """``label.index`` and ``label.value`` of an integer label volume (nothing without a label)."""
    if label is None:
        return {}
    low, high = int(label.min()), int(label.max())
    if low < 0 or high > 255:
        raise UserInputError(f"label values {low}..{high} do not fit the cache's uint8")
    compact = np.ascontiguousarray(label, dtype=np.uint8)  # C order, and 8 times fewer bytes to scan
    index = np.flatnonzero(compact)
    return {"label.index": index.astype(np.int64), "label.value": compact.ravel()[index]}


def write_entry(path: str | Path, channels: Mapping[str, np.ndarray], label: np.ndarray | None, meta: dict) -> int:
    """Write one study's file atomically (temporary name, then rename); returns its size in bytes.

    ``channels``: modality -> 3D array already in its stored dtype; ``meta``: the JSON metadata (``shape``,
    ``modalities`` with their ``dtype`` and ``stored`` kind, ...), completed here with the format and block size.
    """
    tensors = {}
    for name, values in channels.items():
        tensors[f"{name}.blocks"], tensors[f"{name}.offsets"] = encode_channel(values)
    tensors.update(encode_label(label))
    meta = {**meta, "format": FORMAT_VERSION, "block": BLOCK, "has_label": label is not None}
    data = save(tensors, metadata={METADATA_KEY: json.dumps(meta)})
    atomic_write_bytes(path, data)
    return len(data)


def read_header(path: str | Path) -> tuple[dict, int]:
    """The safetensors header of ``path`` and where its tensor bytes start."""
    with open(path, "rb") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
        header = json.loads(stream.read(length))
    return header, 8 + length


class ChunkedChannel:
    """One stored channel: reads any box of it by decompressing only the blocks the box covers."""

    def __init__(self, blocks: np.ndarray, offsets: np.ndarray, shape: Sequence[int], dtype, block: int = BLOCK):
        self.blocks, self.offsets = blocks, offsets
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.block = int(block)
        self.grid = block_grid(self.shape, self.block)
        self.memo: dict[tuple[int, int, int], np.ndarray | None] = {}

    def remembered_block(self, index: tuple[int, int, int]) -> np.ndarray | None:
        """``decode_block``, remembering the last ``MEMO_BLOCKS`` blocks: the patches of one study overlap."""
        if index not in self.memo:
            if len(self.memo) >= MEMO_BLOCKS:
                self.memo.pop(next(iter(self.memo)))
            self.memo[index] = self.decode_block(index)
        return self.memo[index]

    def decode_block(self, index: Sequence[int]) -> np.ndarray | None:
        """The values of block ``index``, or None for an all-zero block."""
        flat = (index[0] * self.grid[1] + index[1]) * self.grid[2] + index[2]
        start, stop = int(self.offsets[flat]), int(self.offsets[flat + 1])
        if start == stop:
            return None
        shape = tuple(s.stop - s.start for s in block_slices(index, self.shape, self.block))
        raw = np.frombuffer(zlib.decompress(self.blocks[start:stop]), dtype=np.uint8)
        values = np.empty(shape, dtype=self.dtype)
        interleaved = values.view(np.uint8).reshape(-1, self.dtype.itemsize)
        for byte in range(self.dtype.itemsize):  # undo the shuffle: byte planes back into each value
            interleaved[:, byte] = raw[byte * values.size : (byte + 1) * values.size]
        return values

    def read(self, region: Sequence[slice]) -> np.ndarray:
        """The voxels of ``region`` (three slices with start and stop inside the grid, step 1) in the stored dtype.

        A region of many blocks (a whole study, for validation) is decoded by several threads: zlib releases the GIL.
        """
        starts = [int(s.start) for s in region]
        stops = [int(s.stop) for s in region]
        out = np.zeros([max(0, b - a) for a, b in zip(starts, stops)], dtype=self.dtype)
        if out.size == 0:
            return out
        ranges = [range(a // self.block, (b - 1) // self.block + 1) for a, b in zip(starts, stops)]
        indices = list(itertools.product(*ranges))
        if len(indices) < PARALLEL_BLOCKS:
            for index in indices:
                self.place(out, starts, stops, index, self.remembered_block(index))
            return out
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            for index, values in zip(indices, pool.map(self.decode_block, indices)):
                self.place(out, starts, stops, index, values)
        return out

    def place(self, out: np.ndarray, starts: list[int], stops: list[int], index, values: np.ndarray | None) -> None:
        """Copy the part of block ``index`` inside ``[starts, stops)`` into ``out`` (nothing for a zero block)."""
        if values is None:
            return
        origin = [k * self.block for k in index]
        low = [max(a, o) for a, o in zip(starts, origin)]
        high = [min(b, o + n) for b, o, n in zip(stops, origin, values.shape)]
        target = tuple(slice(lo - a, hi - a) for lo, hi, a in zip(low, high, starts))
        source = tuple(slice(lo - o, hi - o) for lo, hi, o in zip(low, high, origin))
        out[target] = values[source]

    def read_all(self) -> np.ndarray:
        return self.read(tuple(slice(0, n) for n in self.shape))


class EntryFile:
    """A prepared study's file, memory-mapped: ``meta`` (the JSON metadata), ``channel(name)``, ``label()``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        header, start = read_header(self.path)
        self.meta = json.loads(header.get("__metadata__", {}).get(METADATA_KEY, "null") or "null")
        if not isinstance(self.meta, dict) or self.meta.get("format") != FORMAT_VERSION:
            raise UserInputError(f"{self.path} is not a prepared study of format {FORMAT_VERSION}; prepare it again")
        self._header, self._start = header, start
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r")

    def tensor(self, name: str) -> np.ndarray:
        """A stored tensor as a read-only view of the file."""
        entry = self._header[name]
        begin, end = (self._start + int(v) for v in entry["data_offsets"])
        return self._map[begin:end].view(_SAFETENSORS_DTYPES[entry["dtype"]]).reshape(entry["shape"])

    def channel(self, name: str) -> ChunkedChannel:
        stored = self.meta["modalities"][name]
        return ChunkedChannel(
            self.tensor(f"{name}.blocks"),
            np.asarray(self.tensor(f"{name}.offsets")),
            self.meta["shape"],
            stored["dtype"],
            self.meta["block"],
        )

    def label(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(flat indices, values)`` of the label's non-zero voxels on the whole grid, or None without a label."""
        if not self.meta["has_label"]:
            return None
        return np.asarray(self.tensor("label.index")), np.asarray(self.tensor("label.value"))
