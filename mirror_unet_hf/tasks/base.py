"""What a dataset/task is to this package: ``TaskSpec``, the base class every task module fills in.

A task bundles everything that differs between datasets: where its studies lie on disk and how their
case and patient ids are formed, how one study is read and checked, its label map and metric set, the
labels a model card uses, the preprocessing defaults of the paper, and the phantom writer. The rest of
the package asks the registry (``mirror_unet_hf.tasks.get_task``) instead of testing dataset names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import UserInputError


@dataclass
class StudyFiles:
    """One study found on disk. ``files`` maps a role (modality name, ``"image"``, ``"label"``) to its path."""

    case_id: str
    patient_id: str
    name: str  # how messages name the study: its folder relative to the dataset root
    files: dict[str, Path] = field(default_factory=dict)
    diagnosis: str | None = None
    problem: str | None = None  # a layout problem found while listing (reported like a bad file)


class TaskSpec:
    """One dataset and its task. Subclass it in ``mirror_unet_hf/tasks/<name>.py`` and ``register_task`` an instance.

    Class attributes describe the data; methods read the on-disk layout and score predictions. Methods
    that a dataset cannot support (e.g. phantoms) raise ``UserInputError`` by default.
    """

    name: ClassVar[str]  # registry key, e.g. "autopet"; also the datasets builder config and `--dataset` value
    aliases: ClassVar[tuple[str, ...]] = ()  # other spellings accepted by `get_task` (letters only, lower case)
    title: ClassVar[str]  # how model and dataset cards name the data set
    contents: ClassVar[str]  # what a folder of it holds, for "data_dir ... holds no <contents>" messages
    description: ClassVar[str]  # one line for the datasets builder
    folder: ClassVar[str]  # the dataset folder's name in the public release
    layout_hint: ClassVar[str]  # the expected layout, for error messages
    modalities: ClassVar[tuple[str, ...]]  # every image a study has, in column order
    label_names: ClassVar[tuple[str, ...]]  # label map: value i is label_names[i]
    record_columns: ClassVar[tuple[str, ...]] = ()  # extra string columns of a dataset row (e.g. "diagnosis")
    stratify_column: ClassVar[str | None] = None  # the column folds are stratified by
    # the known values of `stratify_column`, in the order folds are filled; any other value counts as unknown
    stratum_values: ClassVar[tuple[str, ...]] = ()
    # ask this task before the others when guessing a folder's layout (`detect_task`, `evaluate --gt`): set it
    # when the layout is a special case of another task's (nnU-Net's imagesTr/ + dataset.json is also MSD's)
    detect_first: ClassVar[bool] = False
    # model card: the imaging domain ("PET/CT", tag "pet-ct"), what the model does, how metrics are named
    domain: ClassVar[str] = "multimodal"
    domain_tag: ClassVar[str | None] = None
    segmentation_name: ClassVar[str] = "3D segmentation"
    metric_labels: ClassVar[dict[str, tuple[str, str]]] = {}  # metric -> (label, unit)
    # preprocessing defaults of the paper (reference document, section 7)
    preprocessing_modalities: ClassVar[tuple[str, ...]]
    reference_modality: ClassVar[str]
    target_spacing: ClassVar[tuple[float, float, float] | None] = None
    intensity_windows: ClassVar[dict[str, tuple[float, float]]] = {}
    # metrics: the columns `evaluate` writes, and the subset training validation keeps
    metric_columns: ClassVar[tuple[str, ...]]
    validation_columns: ClassVar[tuple[str, ...]]
    # phantoms
    phantom_shape: ClassVar[tuple[int, int, int] | None] = None

    # ------------------------------------------------------------------------------ layout on disk

    def find_root(self, data_dir: Path) -> Path | None:
        """The dataset folder given it or its parent, or None when ``data_dir`` does not hold this layout."""
        raise NotImplementedError

    def discover(self, root: Path) -> list[StudyFiles]:
        """The studies of a dataset folder, without reading any image."""
        raise NotImplementedError

    def read_study(self, study: StudyFiles) -> dict:
        """Read, check and encode one study into a dataset row; ``UserInputError`` names the study and file."""
        raise NotImplementedError

    def record_values(self, study: StudyFiles) -> dict[str, str | None]:
        """The ``record_columns`` of a discovered study from its layout and metadata alone (no image is read), as
        ``read_study`` would fill them; the prepared cache's rows carry them. By default the ``StudyFiles``
        attribute of the same name."""
        return {column: getattr(study, column, None) for column in self.record_columns}

    def metadata_files(self, root: Path) -> list[Path]:
        """Non-image files a build reads (they enter the cache fingerprint)."""
        return []

    def prediction_input(self, study: StudyFiles) -> Path | dict[str, Path]:
        """The inputs `mirror-unet predict --input-dir` reads for a discovered study: what `--study` takes (a
        study folder or a multi-channel file), or a ``{modality: file}`` mapping when the layout keeps a
        study's images among other studies' (nnU-Net's ``imagesTr/<case>_0000.nii.gz``)."""
        raise NotImplementedError

    def ground_truth(self, folder: Path) -> dict[str, Path] | None:
        """``case_id -> mask`` for `evaluate --gt` when ``folder`` holds this layout, else None."""
        return None

    def fixed_split(
        self, root: Path, case_ids: Sequence[str], fold: int, num_folds: int, skip_bad: bool = False
    ) -> tuple[list[str], list[str]] | None:
        """``(train, validation)`` case ids of ``fold`` when the dataset ships its own folds (nnU-Net's
        ``splits_final.json``), else None and the builder makes patient-grouped, stratified folds.

        ``case_ids`` are the studies found on disk; a split naming others is an error (``UserInputError``
        naming the case and the file) unless ``skip_bad``, which lists and leaves them out."""
        return None

    # ------------------------------------------------------------------------------ study inputs

    def modality_file_names(self, modality: str) -> tuple[str, ...]:
        """File names a study folder of this layout uses for a modality (besides ``<modality>.nii.gz``)."""
        return ()

    def split_channels(self, image: Any, modalities: Sequence[str], path: Path) -> dict | None:
        """A single-file multi-channel study (e.g. MSD's 4D NIfTI) split into named images, or None if this
        layout has no such files."""
        return None

    # ------------------------------------------------------------------------------ labels and metrics

    @property
    def max_label(self) -> int:
        return len(self.label_names) - 1

    @property
    def mask_values(self) -> str:
        """The label map as text for messages: ``"0 background, 1 lesion"``."""
        return ", ".join(f"{i} {name}" for i, name in enumerate(self.label_names))

    def score(self, prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict:
        """Every metric of one study (the ``metric_columns`` and possibly more)."""
        raise NotImplementedError

    def validation_metrics(self, prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict:
        """The metrics training validation records for one study."""
        metrics = self.score(prediction, truth, spacing)
        return {key: metrics[key] for key in self.validation_columns}

    def selection_score(self, summary: dict[str, float]) -> float:
        """The number a training run maximises to pick its best checkpoint, from the mean metrics."""
        raise NotImplementedError

    def mean_note(self, scored: Sequence[dict]) -> str:
        """What the mean row of `evaluate` says about how it averaged."""
        return ""

    def case_group(self, case_id: str) -> str | None:
        """The group a study belongs to for `evaluate`'s extra ``mean <group>`` rows (autoPET III: its tracer,
        ``"fdg"`` or ``"psma"``), or None when it belongs to none."""
        return None

    # ------------------------------------------------------------------------------ Hub dataset repos

    def repo_layout(self, names: Sequence[str]) -> dict | None:
        """For a folder pushed as a dataset repo (its relative file paths): ``summary`` (one line for the
        card), ``studies`` (count) and ``example`` (a path) when the files are in this layout, else None."""
        return None

    def repo_study_rows(self, names: set[str]) -> list[dict]:
        """One ``metadata.jsonl`` row per study for `datasets`' niftifolder loader (``<column>_file_name``
        keys pair the files of a study into columns)."""
        return []

    # ------------------------------------------------------------------------------ phantoms

    def phantom_outputs(self, out_dir: Path) -> list[Path]:
        """What `make_phantoms` writes in ``out_dir``: the dataset folder first, then any file beside it."""
        return [out_dir / self.folder]

    def write_phantoms(self, out_dir: Path, root: Path, n: int, seed: int, shape: tuple[int, int, int]) -> None:
        """Write ``n`` synthetic studies into the dataset folder ``root``; files beside it go to ``out_dir``."""
        raise UserInputError(f"the {self.name} task has no phantom writer")

    @property
    def has_phantoms(self) -> bool:
        return self.phantom_shape is not None

    def __repr__(self) -> str:
        return f"<TaskSpec {self.name!r}: {self.title}>"
