"""Preparing a dataset folder into the prepared cache, and loading its folds (``mirror-unet prepare``, ``train.py``).

``prepare_dataset(name, data_dir, cache_dir)`` reads each study's files straight from the folder (checked as the
builder checks them; no copy of the raw bytes is kept) and writes one compact file per study
(``mirror_unet_hf.data.prepared``), ``num_proc`` studies at a time. ``load_prepared_dataset`` does that when needed
and returns the fold's ``train``/``validation`` splits as rows naming those files: the same folds, case ids and
columns as ``load_mirror_dataset``, without the images.

``<cache_dir>/mirror-unet-prepared/<task>-<key>/`` (key: the storage settings and the data folder) holds:

- ``studies/<case id>-<study key>.safetensors``: the study key hashes the study's own files (names, sizes,
  modification times), so an edited study is prepared again and the others are reused;
- ``index-<source fingerprint>.json``: the rows, and the studies ``skip_bad`` left out; written last, so it exists
  only for a complete preparation of exactly those raw files (``builder.source_fingerprint``);
- ``.lock``: held while writing.

Every file is written under a temporary name and renamed, so a killed run leaves only complete study files (the
next run reuses them) and temporaries (the next run removes them).
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from tqdm.auto import tqdm

from ..errors import UserInputError
from ..files import atomic_write_json
from ..tasks import StudyFiles, get_task
from .builder import (
    dataset_name,
    discover_studies,
    find_dataset_root,
    read_study,
    resolve_data_dir,
    skipped_message,
    source_fingerprint,
    split_table,
    study_fingerprint,
)
from .prepared import (
    PREPARED_FILE_COLUMN,
    PREPARED_FOLDER,
    config_with,
    entry_file_name,
    prepare_entry,
    settings_key,
    storage_settings,
)
from .prepared_format import FORMAT_VERSION, METADATA_KEY, read_header
from .preprocessing import PreprocessingConfig, preprocessing_settings
from .splits import check_fold


@dataclass
class PreparedIndex:
    """A complete preparation: its folder, one row per study, the studies left out, and what this call did."""

    folder: Path
    rows: list[dict]
    skipped: list[str]
    new: int = 0
    reused: int = 0
    seconds: float = 0.0

    @property
    def bytes(self) -> int:
        return sum(int(row["bytes"]) for row in self.rows)

    def summary(self) -> str:
        """One line: studies, bytes, seconds."""
        count = len(self.rows)
        rate = f" ({self.new / self.seconds:.3g} studies/s)" if self.new and self.seconds else ""
        return (
            f"prepared {count} studies in {self.folder}: {self.new} new, {self.reused} reused, "
            f"{len(self.skipped)} skipped; {self.bytes / 1e6:.1f} MB ({self.bytes / max(count, 1) / 1e6:.2f} MB per "
            f"study); {self.seconds:.1f} s{rate}"
        )


def cache_folder(cache_dir: str | os.PathLike | None, name: str, settings: dict, root: Path) -> Path:
    """``<cache_dir>/mirror-unet-prepared/<task>-<key of the storage settings and the data folder>``."""
    base = Path(cache_dir if cache_dir is not None else datasets.config.HF_DATASETS_CACHE).expanduser()
    key = settings_key(FORMAT_VERSION, name, storage_settings(config_with(settings)), str(root.resolve()))
    return base / PREPARED_FOLDER / f"{name}-{key}"


def run_settings(name: str, config: Any | None) -> dict:
    """``preprocessing_settings`` of ``config`` (the task's defaults when None), checked against the task."""
    task = get_task(name)
    settings = preprocessing_settings(config if config is not None else PreprocessingConfig.for_dataset(name))
    unknown = [m for m in settings["modalities"] if m not in task.modalities]
    if unknown:
        raise UserInputError(
            f"modality {unknown[0]!r} is not one of the {name} dataset's: {', '.join(task.modalities)}"
        )
    return settings


# ------------------------------------------------------------------------------------------ the index


def index_row(task_name: str, study: StudyFiles, path: Path) -> dict:
    """The row of one prepared study, from discovery and its file's header."""
    header, _ = read_header(path)
    meta = json.loads(header["__metadata__"][METADATA_KEY])
    affine = np.asarray(meta["reference_affine"], dtype=np.float64).reshape(4, 4)
    label = header.get("label.index")
    return {
        "case_id": study.case_id,
        "patient_id": study.patient_id,
        **get_task(task_name).record_values(study),
        "spacing": [float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)],
        "shape": [int(v) for v in meta["reference_shape"]],
        PREPARED_FILE_COLUMN: path.name,
        "bytes": path.stat().st_size,
        "label_voxels": int(label["shape"][0]) if label else 0,
    }


def read_index(path: Path) -> PreparedIndex | None:
    """The index at ``path`` when it and every file it names are there, else None."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    studies = path.parent / "studies"
    if payload.get("format") != FORMAT_VERSION or not all(
        (studies / row[PREPARED_FILE_COLUMN]).is_file() for row in payload["studies"]
    ):
        return None
    return PreparedIndex(path.parent, payload["studies"], payload["skipped"], reused=len(payload["studies"]))


def prune(folder: Path, index_path: Path, rows: list[dict]) -> None:
    """Remove the study files and indexes of earlier preparations that the new index does not use."""
    keep = {row[PREPARED_FILE_COLUMN] for row in rows}
    for path in (folder / "studies").glob("*.safetensors"):
        if path.name not in keep:
            path.unlink(missing_ok=True)
    for path in folder.glob("index-*.json"):
        if path != index_path:
            path.unlink(missing_ok=True)


@contextmanager
def folder_lock(folder: Path, progress: bool) -> Iterator[None]:
    """Hold ``folder/.lock`` (waiting for another process that holds it); released when the process ends."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"waiting for another process preparing {folder}", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# ------------------------------------------------------------------------------------------- the work


def prepare_job(job: tuple[str, StudyFiles, str, dict]) -> tuple[str, str | None]:
    """Read, check, preprocess and write one study; ``(case id, error message or None)``."""
    name, study, path, settings = job
    try:
        record = read_study(name, study)
        images = {modality: record[modality]["bytes"] for modality in settings["modalities"]}
        label = record["label"]["bytes"] if record.get("label") else None
        prepare_entry(path, images, settings, label=label, case_id=study.case_id)
    except UserInputError as error:
        return study.case_id, str(error)
    return study.case_id, None


def limit_threads(threads: int) -> None:
    """Worker initialiser: the cores shared out between the processes."""
    import torch

    torch.set_num_threads(threads)


def run_jobs(jobs: list[tuple], num_proc: int) -> Iterator[tuple[str, str | None]]:
    """``prepare_job`` of every job, in this process or in ``num_proc`` spawned ones (results as they finish)."""
    processes = min(max(1, int(num_proc)), len(jobs))
    if processes <= 1:
        yield from map(prepare_job, jobs)
        return
    threads = max(1, (os.cpu_count() or 1) // processes)
    with multiprocessing.get_context("spawn").Pool(processes, initializer=limit_threads, initargs=(threads,)) as pool:
        yield from pool.imap_unordered(prepare_job, jobs)


def prepare_missing(
    name: str, plan: list[tuple[StudyFiles, Path]], settings: dict, num_proc: int, skip_bad: bool, progress: bool
) -> dict[str, str]:
    """Prepare the studies of ``plan`` whose file is not there yet; returns case id -> error of those skipped."""
    jobs = [(name, study, str(path), settings) for study, path in plan if not path.is_file()]
    failures: dict[str, str] = {}
    with tqdm(total=len(jobs), desc="Preparing studies", unit="study", disable=not progress or not jobs) as bar:
        results = run_jobs(jobs, num_proc)
        try:
            for case_id, error in results:
                bar.update(1)
                if error is not None and not skip_bad:
                    raise UserInputError(error)
                if error is not None:
                    failures[case_id] = error
        finally:
            results.close()  # a failure stops the worker processes
    return failures


def prepare_found(
    name: str,
    root: Path,
    studies: list[StudyFiles],
    cache_dir: str | os.PathLike | None,
    settings: dict,
    num_proc: int = 1,
    skip_bad: bool = False,
    progress: bool = True,
) -> PreparedIndex:
    """``prepare_dataset`` for studies already discovered in ``root``."""
    folder = cache_folder(cache_dir, name, settings, root)
    index_path = folder / f"index-{source_fingerprint(root, studies, name)}.json"
    done = read_index(index_path)
    if done is None:
        with folder_lock(folder, progress):
            # another process may have finished while this one waited
            done = read_index(index_path) or prepare_into(
                name, folder, index_path, studies, settings, num_proc, skip_bad, progress
            )
    if done.skipped and not skip_bad:  # prepared earlier with skip_bad: fail as a new preparation would
        raise UserInputError(done.skipped[0])
    return done


def prepare_into(
    name: str,
    folder: Path,
    index_path: Path,
    studies: list[StudyFiles],
    settings: dict,
    num_proc: int,
    skip_bad: bool,
    progress: bool,
) -> PreparedIndex:
    """The work of ``prepare_found`` once it holds the folder's lock."""
    started = time.perf_counter()
    for temporary in (folder / "studies").glob(".*.tmp"):  # left by a killed run
        temporary.unlink(missing_ok=True)
    plan = [(s, folder / "studies" / entry_file_name(s.case_id, study_fingerprint(s))) for s in studies]
    reused = sum(path.is_file() for _, path in plan)
    failures = prepare_missing(name, plan, settings, num_proc, skip_bad, progress)
    if len(failures) == len(studies):
        raise UserInputError(f"all {len(studies)} studies failed; first: {next(iter(failures.values()))}")
    rows = [index_row(name, study, path) for study, path in plan if study.case_id not in failures]
    skipped = [failures[study.case_id] for study, _ in plan if study.case_id in failures]
    payload = {"format": FORMAT_VERSION, "task": name, "settings": settings}
    atomic_write_json(index_path, {**payload, "studies": rows, "skipped": skipped})
    prune(folder, index_path, rows)
    return PreparedIndex(folder, rows, skipped, len(rows) - reused, reused, time.perf_counter() - started)


def prepare_dataset(
    name: str,
    data_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    config: Any | None = None,
    num_proc: int = 1,
    skip_bad: bool = False,
    progress: bool = True,
    revision: str | None = None,
) -> PreparedIndex:
    """Prepare every study of a dataset folder (or Hub dataset id) once; resumable, ``num_proc`` at a time.

    ``config``: the preprocessing (a model config or ``PreprocessingConfig``; the task's defaults when None).
    ``skip_bad``: leave out unreadable studies (listed in the index and the summary) instead of stopping.
    """
    name = dataset_name(name)
    settings = run_settings(name, config)
    root = find_dataset_root(name, resolve_data_dir(data_dir, revision))
    return prepare_found(name, root, discover_studies(name, root), cache_dir, settings, num_proc, skip_bad, progress)


def prepared_features(name: str) -> datasets.Features:
    """Columns of ``load_prepared_dataset``'s splits."""
    columns = {"case_id": datasets.Value("string"), "patient_id": datasets.Value("string")}
    columns.update({column: datasets.Value("string") for column in get_task(name).record_columns})
    columns["spacing"] = datasets.List(datasets.Value("float64"), length=3)
    columns["shape"] = datasets.List(datasets.Value("int64"), length=3)
    columns[PREPARED_FILE_COLUMN] = datasets.Value("string")
    columns["bytes"] = datasets.Value("int64")
    columns["label_voxels"] = datasets.Value("int64")
    return datasets.Features(columns)


def load_prepared_dataset(
    name: str,
    data_dir: str | os.PathLike,
    config: Any | None = None,
    fold: int = 0,
    num_folds: int = 5,
    cache_dir: str | os.PathLike | None = None,
    skip_bad: bool = False,
    num_proc: int = 1,
    revision: str | None = None,
) -> datasets.DatasetDict:
    """``DatasetDict(train=..., validation=...)`` of one fold, each row naming its study's prepared file.

    The folds, case ids and columns of ``load_mirror_dataset`` (without the images; with ``prepared_file``,
    ``bytes`` and ``label_voxels``); ``MirrorPatchDataset`` and ``prepare_studies`` read such splits. Studies not
    prepared yet for ``config``'s preprocessing are prepared first (``prepare_dataset``).
    """
    name = dataset_name(name)
    check_fold(fold, num_folds)
    settings = run_settings(name, config)
    root = find_dataset_root(name, resolve_data_dir(data_dir, revision))
    studies = discover_studies(name, root)
    # the dataset's own folds, checked before the (long) preparation
    fixed = get_task(name).fixed_split(root, [study.case_id for study in studies], fold, num_folds, skip_bad)
    index = prepare_found(name, root, studies, cache_dir, settings, num_proc, skip_bad)
    if index.skipped:
        warnings.warn(skipped_message(index.skipped, len(studies)), UserWarning, stacklevel=2)
    rows = [
        {**row, PREPARED_FILE_COLUMN: str(index.folder / "studies" / row[PREPARED_FILE_COLUMN])} for row in index.rows
    ]
    table = datasets.Dataset.from_list(rows, features=prepared_features(name))
    return split_table(name, table, fixed, fold, num_folds)
