"""Prepared studies: each study preprocessed once into a compact file (``prepared_format``), read back for
training patches and whole-volume validation.

``prepare_entry`` runs ``preprocess_study`` without the intensity step and writes one file: modalities with an
intensity window keep their resampled values (CT in HU as int16, PET in SUV as float16), so the window, and
whether it clips, is applied when the study is read; z-scored modalities (MRI) are stored z-scored (float16).

``PreparedStudies(split, config)`` reads them for one split:

- a split of ``load_prepared_dataset`` (``mirror_unet_hf.data.preparation``, what ``mirror-unet prepare`` and
  ``train.py`` use) names each study's file in its ``prepared_file`` column;
- a split of ``load_mirror_dataset`` (NIfTI bytes embedded) is prepared here on first use, into a folder next
  to the split's own cache files (a temporary folder for an in-memory split), and reused by later calls.

``studies[i]`` is a ``PreprocessedStudy`` on the whole preprocessed grid (validation; ``restore`` maps back to the
original grid); ``studies.training_arrays(i)`` gives the body-box crop the patch sampler reads, lazily: cutting a
patch out of ``image`` decodes only the blocks it covers. Against the exact path (``preprocess_study``), values
differ by the storage rounding only: ≤ 0.5 HU / (high − low) for CT (1.4e-3 with −100…250 HU), ≤ 2⁻¹¹ of the
value for float16 channels (4.9e-4 for SUV 0…15 scaled to [0, 1]); labels, boxes and patch centres are equal.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from tqdm.auto import tqdm

from ..errors import UserInputError
from .constants import diagnosis_index
from .prepared_format import EntryFile, compact_dtype, quantise, write_entry
from .preprocessing import (
    Box,
    PreprocessedStudy,
    PreprocessingConfig,
    default_foreground_channels,
    foreground_box,
    normalise_channel,
    preprocess_study,
    preprocessing_settings,
)

PREPARED_FILE_COLUMN = "prepared_file"
PREPARED_FOLDER = "mirror-unet-prepared"


# ------------------------------------------------------------------------------------------- settings


def storage_settings(config: Any) -> dict:
    """What a prepared file depends on: the modalities, the reference grid, the voxel size, and which modalities
    are z-scored when prepared (the others are stored unnormalised, so their windows are not part of it)."""
    settings = preprocessing_settings(config)
    return {
        "modalities": sorted(settings["modalities"]),
        "reference_modality": settings["reference_modality"],
        "target_spacing": settings["target_spacing"],
        "normalised": sorted(m for m in settings["modalities"] if m not in settings["intensity_windows"]),
    }


def settings_key(*parts: Any) -> str:
    """A 16-hex-digit hash of JSON-serialisable parts (cache folder and file names)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def entry_file_name(case_id: str, key: str) -> str:
    """``<case id, file-name safe, at most 80 characters>-<key>.safetensors``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", case_id)[:80].strip("._") or "study"
    return f"{safe}-{key}.safetensors"


# ------------------------------------------------------------------------------------------ preparing


def prepare_entry(path: str | Path, images: dict, settings: dict, label=None, case_id: str | None = None) -> dict:
    """Preprocess one study (``images``: modality -> NIfTI path, bytes or image) and write its prepared file.

    ``settings``: ``preprocessing_settings`` of the run. Returns ``bytes`` (file size) and ``label_voxels``.
    """
    config = PreprocessingConfig(
        tuple(settings["modalities"]),
        settings["reference_modality"],
        None if settings["target_spacing"] is None else tuple(settings["target_spacing"]),
        {},
    )
    study = preprocess_study(images, config, label=label, case_id=case_id, normalise=False)
    raw = {name: name in settings["intensity_windows"] for name in study.modalities}
    for index, name in enumerate(study.modalities):
        if not raw[name]:
            normalise_channel(study.image[index], None)
    foreground = default_foreground_channels(study.modalities)
    box = foreground_box(study.image, foreground)
    channels, stored = {}, {}
    for index, name in enumerate(study.modalities):
        dtype = compact_dtype(name, study.image[index], raw[name])
        channels[name] = quantise(study.image[index], dtype)
        stored[name] = {"dtype": dtype.name, "stored": "raw" if raw[name] else "normalised"}
    meta = {
        "case_id": case_id or "",
        "settings": storage_settings(config_with(settings)),
        "modalities": stored,
        "shape": list(study.image.shape[1:]),
        "spacing": list(study.spacing),
        "affine": np.asarray(study.affine, dtype=np.float64).ravel().tolist(),
        "reference_shape": list(study.reference_shape),
        "reference_affine": np.asarray(study.reference_affine, dtype=np.float64).ravel().tolist(),
        "box": [v for s in box for v in (s.start, s.stop)],
        "box_channels": [study.modalities[c] for c in foreground],
        "minimum": {study.modalities[c]: float(study.image[c].min()) for c in foreground},
    }
    size = write_entry(path, channels, study.label, meta)
    voxels = 0 if study.label is None else int(np.count_nonzero(study.label))
    return {"bytes": size, "label_voxels": voxels}


def config_with(settings: dict) -> PreprocessingConfig:
    """A ``PreprocessingConfig`` holding ``preprocessing_settings`` output."""
    spacing = settings["target_spacing"]
    return PreprocessingConfig(
        tuple(settings["modalities"]),
        settings["reference_modality"],
        None if spacing is None else tuple(spacing),
        {name: tuple(window) for name, window in settings["intensity_windows"].items()},
    )


def split_entry_folder(hf_split: datasets.Dataset, settings: dict) -> Path | None:
    """Where the prepared files of a ``load_mirror_dataset`` split go: next to its cache files, in a folder named
    by the storage settings and those files; None for an in-memory split."""
    files = sorted({f["filename"] for f in hf_split.cache_files})
    if not files:
        return None
    key = settings_key(storage_settings(config_with(settings)), files)
    return Path(files[0]).parent / PREPARED_FOLDER / key


def _remove_if_owner(folder: str, pid: int) -> None:
    if os.getpid() == pid:  # not from a forked DataLoader worker
        shutil.rmtree(folder, ignore_errors=True)


def prepare_split(owner: object, hf_split: datasets.Dataset, settings: dict, case_ids: Sequence[str]) -> list[Path]:
    """The prepared files of every row of a ``load_mirror_dataset`` split, preparing those not there yet.

    An in-memory split is prepared into a temporary folder that lives as long as ``owner``."""
    folder = split_entry_folder(hf_split, settings)
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="mirror-unet-prepared-"))
        weakref.finalize(owner, _remove_if_owner, str(folder), os.getpid())
    paths = [
        folder / entry_file_name(case or f"row{i}", settings_key(case or i)[:12]) for i, case in enumerate(case_ids)
    ]
    missing = [i for i, path in enumerate(paths) if not path.is_file()]
    if missing:
        columns = [*settings["modalities"], *(c for c in ("label",) if c in hf_split.column_names)]
        rows = hf_split.select_columns(columns)
        for i in tqdm(missing, desc="Preprocessing studies", unit="study"):
            row = rows[i]
            images = {name: row[name] for name in settings["modalities"]}
            prepare_entry(paths[i], images, settings, label=row.get("label"), case_id=case_ids[i] or None)
    return paths


# -------------------------------------------------------------------------------------------- reading


class NormalisedView:
    """The body-box crop of a prepared study's channels, normalised as the run asks, read lazily.

    It slices like the float32 array ``(M, *box)`` it stands for (``view[..., a:b, c:d, e:f]``, ``np.asarray``):
    a slice decodes only the blocks it covers, so the sampler cuts patches from it without reading the study.
    """

    def __init__(self, entry: EntryFile, modalities: Sequence[str], windows: dict, box: Box, clip: bool = True):
        self.clip = clip
        self.channels = [entry.channel(name) for name in modalities]
        self.windows = [
            windows.get(name) if entry.meta["modalities"][name]["stored"] == "raw" else None for name in modalities
        ]
        self.box = tuple(box)
        self.shape = (len(self.channels), *(s.stop - s.start for s in self.box))
        self.dtype = np.dtype(np.float32)
        self.ndim = 4

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[...]
        return whole if dtype is None else whole.astype(dtype)

    def read(self, channel: int, region: Sequence[slice]) -> np.ndarray:
        """One channel over ``region`` (slices of the box), normalised, float32."""
        absolute = [slice(s.start + b.start, s.stop + b.start) for s, b in zip(region, self.box)]
        values = self.channels[channel].read(absolute).astype(np.float32)
        if self.windows[channel] is not None:
            normalise_channel(values, self.windows[channel], self.clip)
        return values

    def __getitem__(self, key) -> np.ndarray:
        parts = key if isinstance(key, tuple) else (key,)
        ellipses = sum(part is Ellipsis for part in parts)
        if ellipses > 1 or len(parts) - ellipses > 4:
            raise IndexError(f"too many indices for a {self.ndim}-dimensional view")
        if ellipses:
            at = next(i for i, part in enumerate(parts) if part is Ellipsis)
            parts = (*parts[:at], *[slice(None)] * (5 - len(parts)), *parts[at + 1 :])
        parts = (*parts, *[slice(None)] * (4 - len(parts)))
        spatial = [p.indices(n) if isinstance(p, slice) else None for p, n in zip(parts[1:], self.shape[1:])]
        if any(s is None or s[2] != 1 for s in spatial) or not isinstance(parts[0], (slice, int, np.integer)):
            return np.asarray(self)[key]  # fancy indexing: read everything, then index
        region = [slice(start, max(start, stop)) for start, stop, _ in spatial]
        if not isinstance(parts[0], slice):
            return self.read(range(self.shape[0])[parts[0]], region)
        chosen = range(self.shape[0])[parts[0]]
        shape = (len(chosen), *(s.stop - s.start for s in region))
        out = np.empty(shape, dtype=np.float32)
        for position, channel in enumerate(chosen):
            out[position] = self.read(channel, region)
        return out


def label_in_box(
    label: tuple[np.ndarray, np.ndarray] | None, shape: Sequence[int], box: Box
) -> tuple[np.ndarray, np.ndarray]:
    """The dense uint8 label of ``box`` and the flat indices (C order, within the box) of its non-zero voxels."""
    size = tuple(s.stop - s.start for s in box)
    dense = np.zeros(size, dtype=np.uint8)
    if label is None or label[0].size == 0:
        return dense, np.empty(0, dtype=np.int64)
    coords = np.unravel_index(label[0], tuple(shape))
    inside = np.ones(label[0].size, dtype=bool)
    for axis, s in enumerate(box):
        inside &= (coords[axis] >= s.start) & (coords[axis] < s.stop)
    local = np.ravel_multi_index(tuple(c[inside] - s.start for c, s in zip(coords, box)), size)
    dense.ravel()[local] = label[1][inside]
    return dense, local.astype(np.int64)


def whole_label(label: tuple[np.ndarray, np.ndarray] | None, shape: Sequence[int]) -> np.ndarray | None:
    """The int64 label volume of a prepared file (None without a label)."""
    if label is None:
        return None
    dense = np.zeros(tuple(shape), dtype=np.int64)
    dense.ravel()[label[0]] = label[1]
    return dense


def check_compatible(meta: dict, settings: dict, path: Path) -> None:
    """Refuse a prepared file made with other storage settings than the run's (``UserInputError`` saying which)."""
    stored = meta["settings"]
    problems = []
    for key in ("reference_modality", "target_spacing"):
        if stored[key] != settings[key]:
            problems.append(f"{key} {stored[key]!r} (the run: {settings[key]!r})")
    for name in settings["modalities"]:
        kind = meta["modalities"].get(name, {}).get("stored")
        if kind is None:
            problems.append(f"no {name!r} channel (it holds {', '.join(meta['modalities'])})")
        elif (kind == "raw") != (name in settings["intensity_windows"]):
            wanted = "an intensity window" if name in settings["intensity_windows"] else "z-scoring"
            problems.append(f"{name!r} stored {kind} (the run asks for {wanted})")
    if problems:
        raise UserInputError(
            f"prepared study {path} was made with other settings: {'; '.join(problems)}; prepare the data for "
            "this run's preprocessing (mirror-unet prepare --preset ...) or use another --cache_dir"
        )


def box_of(meta: dict) -> Box:
    return tuple(slice(int(meta["box"][2 * a]), int(meta["box"][2 * a + 1])) for a in range(3))


class PreparedStudies(Sequence):
    """Preprocessed studies of one split, read from their prepared files (see the module docstring).

    ``studies[i]`` is a ``PreprocessedStudy`` (for sliding-window validation: whole volume, label, and
    ``restore`` back to the original grid); ``studies.training_arrays(i)`` gives what the patch sampler needs.
    """

    def __init__(self, hf_split: datasets.Dataset, config: Any):
        self.settings = preprocessing_settings(config)
        self.clip = self.settings["clip_intensities"]
        self.modalities = tuple(self.settings["modalities"])
        columns = hf_split.column_names
        count = len(hf_split)
        self.case_ids = [str(c or "") for c in hf_split["case_id"]] if "case_id" in columns else [""] * count
        diagnoses = hf_split["diagnosis"] if "diagnosis" in columns else [None] * count
        self.class_labels = [diagnosis_index(d) for d in diagnoses]
        if PREPARED_FILE_COLUMN in columns:
            self.files = [Path(p) for p in hf_split[PREPARED_FILE_COLUMN]]
        else:
            missing = [m for m in self.modalities if m not in columns]
            if missing:
                raise UserInputError(
                    f"the dataset has no column for modality {missing[0]!r}; its columns are: {', '.join(columns)}"
                )
            self.files = prepare_split(self, hf_split, self.settings, self.case_ids) if count else []
        if self.files:
            self.open(0)  # a cache made with other settings fails here, not in a DataLoader worker
        self.boxes: dict[int, Box] = {}  # sampler boxes that differ from the stored one, once computed

    def __len__(self) -> int:
        return len(self.files)

    def open(self, index: int) -> EntryFile:
        """Study ``index``'s prepared file, checked against the run's settings."""
        entry = EntryFile(self.files[index])
        check_compatible(entry.meta, self.settings, entry.path)
        return entry

    def case_id(self, index: int, entry: EntryFile) -> str:
        return self.case_ids[index] or entry.meta["case_id"]

    def __getitem__(self, index: int) -> PreprocessedStudy:
        if not isinstance(index, (int, np.integer)):
            raise TypeError("PreparedStudies takes one integer index")
        entry = self.open(int(index))
        meta = entry.meta
        whole = tuple(slice(0, int(n)) for n in meta["shape"])
        image = NormalisedView(entry, self.modalities, self.settings["intensity_windows"], whole, self.clip)[...]
        return PreprocessedStudy(
            image=image,
            label=whole_label(entry.label(), meta["shape"]),
            spacing=tuple(float(v) for v in meta["spacing"]),
            affine=np.asarray(meta["affine"], dtype=np.float64).reshape(4, 4),
            reference_shape=tuple(int(v) for v in meta["reference_shape"]),
            reference_affine=np.asarray(meta["reference_affine"], dtype=np.float64).reshape(4, 4),
            modalities=self.modalities,
            case_id=self.case_id(int(index), entry),
        )

    def keeps_foreground(self, name: str, meta: dict) -> bool:
        """Whether this run's normalisation of a box channel is non-zero exactly where the stored values are."""
        if meta["modalities"][name]["stored"] == "normalised":
            return True
        low = self.settings["intensity_windows"][name][0]
        return low == 0 and meta["minimum"][name] >= 0  # clipping at 0 keeps v > 0, and no value is below 0

    def training_box(self, index: int, entry: EntryFile) -> Box:
        """The sampler's foreground box: the stored one, unless this run's channels or windows move it."""
        meta = entry.meta
        foreground = [self.modalities[c] for c in default_foreground_channels(self.modalities)]
        if foreground == meta["box_channels"] and all(self.keeps_foreground(n, meta) for n in foreground):
            return box_of(meta)
        if index not in self.boxes:
            whole = tuple(slice(0, int(n)) for n in meta["shape"])
            values = NormalisedView(entry, foreground, self.settings["intensity_windows"], whole, self.clip)[...]
            self.boxes[index] = foreground_box(values)
        return self.boxes[index]

    def has_foreground(self) -> np.ndarray:
        """A bool per study: whether its label has a voxel > 0 inside its training box (a lesion-positive study
        for the sampler); reads only the stored sparse labels."""
        found = []
        for index in range(len(self)):
            entry = self.open(index)
            _, positives = label_in_box(entry.label(), entry.meta["shape"], self.training_box(index, entry))
            found.append(len(positives) > 0)
        return np.array(found, dtype=bool)

    def training_arrays(self, index: int) -> dict:
        """``image`` (M, *box; a ``NormalisedView``) and ``label`` (*box, uint8) cropped to the foreground box,
        ``positives`` (flat indices within the box), ``class_label``, ``case_id``."""
        index = int(index)
        entry = self.open(index)
        box = self.training_box(index, entry)
        label, positives = label_in_box(entry.label(), entry.meta["shape"], box)
        return {
            "image": NormalisedView(entry, self.modalities, self.settings["intensity_windows"], box, self.clip),
            "label": label,
            "positives": positives,
            "class_label": self.class_labels[index],
            "case_id": self.case_id(index, entry),
        }


def prepare_studies(hf_split: datasets.Dataset, config: Any) -> PreparedStudies:
    """Preprocess every study of a split once (cached) and return them as ``PreparedStudies``.

    Use it for sliding-window validation: ``for study in prepare_studies(ds["validation"], config): ...``
    """
    return PreparedStudies(hf_split, config)
