"""Hugging Face ``datasets`` builder for every registered task, and ``load_mirror_dataset``.

The on-disk layouts, case ids and study readers are the tasks' (``mirror_unet_hf.tasks``: AutoPET
``FDG-PET-CT-Lesions/<patient>/<study>/{CTres,SUV,SEG}.nii.gz``, MSD ``Task01_BrainTumour/``, ...);
``data_dir`` may point at the dataset folder itself or at its parent.

The builder writes ONE split, ``"studies"``: every study with its NIfTI bytes embedded (``datasets.Nifti``
columns decode without the raw folder). ``load_mirror_dataset`` cuts it into ``train``/``validation``
with the patient-grouped, stratified (AutoPET: by diagnosis, autoPET III: by tracer) k-fold rule of
``mirror_unet_hf.data.splits``, or the dataset's own folds (``TaskSpec.fixed_split``), so every fold reuses one cache. The cache id includes a fingerprint of the raw files' names, sizes and
modification times: editing, adding or removing a study rebuilds, a second identical call reads nothing.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets.exceptions import DatasetGenerationError
from datasets.utils.py_utils import classproperty

from ..errors import UserInputError
from ..tasks import StudyFiles, TaskSpec, get_task, list_tasks
from .splits import check_fold, split_indices

VERSION = datasets.Version("1.0.0")
STUDIES_SPLIT = "studies"
_SKIPPED_MARKER = "Skipped studies (skip_bad=True):"


# ------------------------------------------------------------------------------------------ discovery


def dataset_name(name: str) -> str:
    """Normalise a dataset name (``BrainTumour``, ``brain-tumour`` ... ) or raise ``UserInputError``."""
    return get_task(name).name


def resolve_data_dir(data_dir: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as it is; a Hub dataset id (``namespace/name`` that is not a local path) downloaded
    into the Hugging Face cache (``mirror_unet_hf.hub.fetch_dataset``) and its snapshot folder returned."""
    local = Path(data_dir).expanduser()
    if local.exists():
        return local
    from ..hub.fetch import fetch_dataset, is_repo_id

    if is_repo_id(str(data_dir)):
        return fetch_dataset(str(data_dir), revision=revision)
    return local


def find_dataset_root(name: str, data_dir: str | os.PathLike) -> Path:
    """The task's dataset folder (``FDG-PET-CT-Lesions`` / ``Task01_BrainTumour`` ...) given it or its parent."""
    task = get_task(name)
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise UserInputError(f"data_dir {str(data_dir)!r} does not exist or is not a folder")
    root = task.find_root(data_dir)
    if root is None:
        raise UserInputError(
            f"data_dir {str(data_dir)!r} holds no {task.contents}; expected {task.layout_hint} in it or below it"
        )
    return root


def discover_studies(name: str, root: Path) -> list[StudyFiles]:
    """List the studies of a dataset folder (reads no image). Raises ``UserInputError`` when there are none."""
    studies = get_task(name).discover(root)
    if not studies:
        raise UserInputError(f"no studies found in {str(root)!r}; see the expected layout in mirror_unet_hf.tasks")
    seen: dict[str, str] = {}
    for study in studies:
        if study.case_id in seen:
            raise UserInputError(
                f"studies {seen[study.case_id]!r} and {study.name!r} map to the same case id {study.case_id!r}"
            )
        seen[study.case_id] = study.name
    return studies


def file_stamp(path: Path) -> str:
    """``path|size|mtime_ns`` (``path|missing`` when it cannot be read): what a fingerprint hashes per file."""
    try:
        stat = path.stat()
        return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    except OSError:
        return f"{path}|missing"


def source_fingerprint(root: Path, studies: list[StudyFiles], task: str | TaskSpec = "autopet") -> str:
    """Hash of the names, sizes and modification times of every file the build would read."""
    paths = sorted(
        {path for study in studies for path in study.files.values()} | set(get_task(task).metadata_files(root))
    )
    digest = hashlib.sha256()
    for study in studies:
        digest.update(f"{study.case_id}|{study.problem}\n".encode())
    for path in paths:
        digest.update(f"{file_stamp(path)}\n".encode())
    return digest.hexdigest()[:16]


def study_fingerprint(study: StudyFiles) -> str:
    """Hash of one study's case id and the names, sizes and modification times of its own files (not the
    dataset's metadata files): what the prepared cache keys each study's file by."""
    lines = [study.case_id, *(f"{role}|{file_stamp(path)}" for role, path in sorted(study.files.items()))]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


# -------------------------------------------------------------------------------------------- reading


def read_study(name: str, study: StudyFiles) -> dict:
    """Read, check and encode one study into a dataset record; ``UserInputError`` names the study and file."""
    if study.problem:
        raise UserInputError(study.problem)
    return get_task(name).read_study(study)


# -------------------------------------------------------------------------------------------- builder


def dataset_features(name: str) -> datasets.Features:
    """Columns of the ``studies`` split (and of ``load_mirror_dataset``'s splits)."""
    task = get_task(name)
    columns = {"case_id": datasets.Value("string"), "patient_id": datasets.Value("string")}
    columns.update({column: datasets.Value("string") for column in task.record_columns})
    for modality in task.modalities:
        columns[modality] = datasets.Nifti()
    columns["label"] = datasets.Nifti()
    columns["spacing"] = datasets.List(datasets.Value("float64"), length=3)
    columns["shape"] = datasets.List(datasets.Value("int64"), length=3)
    return datasets.Features(columns)


@dataclass
class MirrorDatasetConfig(datasets.BuilderConfig):
    """``skip_bad``: skip and report unreadable studies instead of failing; ``source_fingerprint``: cache key of the raw files."""

    skip_bad: bool = False
    source_fingerprint: str = ""


class MirrorDatasetBuilder(datasets.GeneratorBasedBuilder):
    """Any registered task (``config_name="autopet"``, ``"brain_tumour"``, ...) from a local folder.

    ``MirrorDatasetBuilder(config_name="autopet", data_dir=..., cache_dir=...)``, then
    ``download_and_prepare()`` and ``as_dataset("studies")``. Most users want ``load_mirror_dataset``.
    """

    BUILDER_CONFIG_CLASS = MirrorDatasetConfig

    # One config per registered task, read from the registry on every use (not memoised as `datasets` does),
    # so a task registered after this module was imported is buildable too.
    @classproperty
    @classmethod
    def BUILDER_CONFIGS(cls) -> list[MirrorDatasetConfig]:
        return [MirrorDatasetConfig(name=t.name, version=VERSION, description=t.description) for t in list_tasks()]

    @classproperty
    @classmethod
    def builder_configs(cls) -> dict[str, MirrorDatasetConfig]:
        return {config.name: config for config in cls.BUILDER_CONFIGS}

    DEFAULT_CONFIG_NAME = "autopet"
    # Rows carry whole volumes: flush often so memory stays at a few studies.
    DEFAULT_WRITER_BATCH_SIZE = 2

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(description=self.config.description, features=dataset_features(self.config.name))

    def _split_generators(self, dl_manager):
        if not self.config.data_dir:
            raise UserInputError("MirrorDatasetBuilder needs data_dir (the dataset folder or its parent)")
        root = find_dataset_root(self.config.name, self.config.data_dir)
        return [
            datasets.SplitGenerator(
                name=STUDIES_SPLIT, gen_kwargs={"studies": discover_studies(self.config.name, root)}
            )
        ]

    def _generate_examples(self, studies: list[StudyFiles]):
        failures = []
        for study in studies:
            try:
                record = read_study(self.config.name, study)
            except UserInputError as error:
                if not self.config.skip_bad:
                    raise
                failures.append(str(error))
                continue
            yield study.case_id, record
        self.skipped_studies = failures
        if failures and len(failures) == len(studies):
            raise UserInputError(f"all {len(studies)} studies failed; first: {failures[0]}")
        if failures:
            self.info.description = f"{self.config.description}\n\n{_SKIPPED_MARKER}\n" + "\n".join(
                f"- {f}" for f in failures
            )
            warnings.warn(skipped_message(failures, len(studies)), UserWarning, stacklevel=2)


def skipped_message(failures: list[str], total: int) -> str:
    """The warning that lists the studies ``skip_bad`` left out."""
    return f"skipped {len(failures)} of {total} studies (skip_bad=True):\n" + "\n".join(f"  - {f}" for f in failures)


def fold_indices(
    task: TaskSpec, table: datasets.Dataset, fixed: tuple[list[str], list[str]] | None, fold: int, num_folds: int
) -> tuple[list[int], list[int]]:
    """``(train, validation)`` row indices of ``table`` for ``fold``: the dataset's own folds (``fixed``, from
    ``TaskSpec.fixed_split``) where it ships them, else patient-grouped folds stratified by ``stratify_column``."""
    if fixed is not None:
        row_of = {case: index for index, case in enumerate(table["case_id"])}
        # studies left out as unreadable (skip_bad) are not in the table
        return [row_of[c] for c in fixed[0] if c in row_of], [row_of[c] for c in fixed[1] if c in row_of]
    column = task.stratify_column
    strata = list(table[column]) if column and column in table.column_names else None
    return split_indices(list(table["patient_id"]), strata, fold, num_folds, task.stratum_values)


def load_mirror_dataset(
    name: str,
    data_dir: str | os.PathLike,
    fold: int = 0,
    num_folds: int = 5,
    cache_dir: str | os.PathLike | None = None,
    skip_bad: bool = False,
    revision: str | None = None,
) -> datasets.DatasetDict:
    """Load a registered dataset as ``DatasetDict(train=..., validation=...)`` for one cross-validation fold.

    Args:
        name: a task name (``mirror_unet_hf.tasks.task_names()``: ``"autopet"``, ``"brain_tumour"``).
        data_dir: the dataset folder (``FDG-PET-CT-Lesions`` / ``Task01_BrainTumour``) or its parent, or the id
            of a Hub dataset repo published with ``mirror-unet push --dataset`` (downloaded into the cache).
        fold, num_folds: which of the ``num_folds`` patient-grouped folds is the validation set. A dataset that
            ships its folds (autoPET III's ``splits_final.json``) uses them exactly; ``num_folds`` must then
            equal their number.
        cache_dir: datasets cache folder (default: the datasets library's own).
        skip_bad: skip unreadable studies with a warning listing each and why, instead of failing on the first.
        revision: branch, tag or commit of a Hub dataset repo (ignored for a local folder).

    Rows: ``case_id``, ``patient_id``, the task's ``record_columns`` (AutoPET: ``diagnosis``, autoPET III:
    ``tracer``), one ``datasets.Nifti`` column per modality,
    ``label`` (Nifti), ``spacing`` (3 floats, mm) and ``shape`` (3 ints) of the reference grid.
    """
    name = dataset_name(name)
    check_fold(fold, num_folds)
    root = find_dataset_root(name, resolve_data_dir(data_dir, revision))
    studies = discover_studies(name, root)
    # the dataset's own folds, checked before the (long) build
    fixed = get_task(name).fixed_split(root, [study.case_id for study in studies], fold, num_folds, skip_bad)
    builder = MirrorDatasetBuilder(
        dataset_name="mirror_unet",
        config_name=name,
        data_dir=str(root.resolve()),
        cache_dir=None if cache_dir is None else str(cache_dir),
        skip_bad=bool(skip_bad),
        source_fingerprint=source_fingerprint(root, studies, name),
    )
    try:
        builder.download_and_prepare()
    except DatasetGenerationError as error:
        if isinstance(error.__cause__, UserInputError):
            raise error.__cause__ from None
        raise
    if not hasattr(builder, "skipped_studies") and _SKIPPED_MARKER in (builder.info.description or ""):
        skipped = builder.info.description.split(_SKIPPED_MARKER, 1)[1].strip().splitlines()
        warnings.warn(skipped_message([s.removeprefix("- ") for s in skipped], len(studies)), UserWarning, stacklevel=2)
    table = builder.as_dataset(split=STUDIES_SPLIT)
    return split_table(name, table, fixed, fold, num_folds)


def split_table(
    name: str, table: datasets.Dataset, fixed: tuple[list[str], list[str]] | None, fold: int, num_folds: int
) -> datasets.DatasetDict:
    """``DatasetDict(train=..., validation=...)`` of ``table``'s rows for ``fold`` (``fold_indices``), with a warning
    when a split is empty."""
    train, validation = fold_indices(get_task(name), table, fixed, fold, num_folds)
    if not train or not validation:
        cause = (
            "the dataset's own folds leave"
            if fixed
            else f"{len(set(table['patient_id']))} patient(s) for {num_folds} folds leaves"
        )
        warnings.warn(
            f"{name}: {cause} the {'training' if not train else 'validation'} split of fold {fold} empty",
            UserWarning,
            stacklevel=3,
        )
    return datasets.DatasetDict({"train": table.select(train), "validation": table.select(validation)})
