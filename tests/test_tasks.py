"""The task registry: lookup by name and alias, and that a new dataset needs only its own module.

The toy task below is what a contributor writes in ``mirror_unet_hf/tasks/<name>.py`` (CONTRIBUTING.md):
once registered, the datasets builder, ``evaluate`` (ground-truth layout, metrics, mask values),
``predict --input-dir`` and training validation take it without any other module being edited.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mirror_unet_hf.cli import main
from mirror_unet_hf.data import PreprocessingConfig, load_mirror_dataset, make_phantoms
from mirror_unet_hf.data.nifti_io import grid_of, nifti_from_bytes, read_array, read_bytes, require_label_values
from mirror_unet_hf.errors import UserInputError
from mirror_unet_hf.evaluation import evaluate_folders, find_ground_truth
from mirror_unet_hf.metrics import autopet_metrics
from mirror_unet_hf.tasks import StudyFiles, TaskSpec, get_task, list_tasks, register_task, registry, task_names
from mirror_unet_hf.validation import selection_score

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


class ToyTask(TaskSpec):
    """``ToyScans/<patient>-<visit>/{ct,pet,mask}.nii.gz``; case id = the folder name."""

    name = "toy_scans"
    aliases = ("toy",)
    title = "Toy scans"
    contents = "toy scans"
    description = "A two-modality toy layout for the registry tests."
    folder = "ToyScans"
    layout_hint = "ToyScans/<patient>-<visit>/{ct,pet,mask}.nii.gz"
    modalities = ("ct", "pet")
    label_names = ("background", "lesion")
    preprocessing_modalities = ("ct", "pet")
    reference_modality = "pet"
    target_spacing = (4.0, 4.0, 6.0)
    intensity_windows = {"pet": (0.0, 10.0)}
    metric_columns = ("dice", "fpv_ml", "fnv_ml")
    validation_columns = ("dice",)

    def find_root(self, data_dir: Path) -> Path | None:
        root = data_dir / self.folder if (data_dir / self.folder).is_dir() else data_dir
        return root if any(root.glob("*/mask.nii.gz")) else None

    def discover(self, root: Path) -> list[StudyFiles]:
        return [
            StudyFiles(
                case.name,
                case.name.split("-")[0],
                case.name,
                files={"ct": case / "ct.nii.gz", "pet": case / "pet.nii.gz", "label": case / "mask.nii.gz"},
            )
            for case in sorted(p for p in root.iterdir() if p.is_dir())
        ]

    def read_study(self, study: StudyFiles) -> dict:
        record = {"case_id": study.case_id, "patient_id": study.patient_id}
        for role, path in study.files.items():
            data = read_bytes(path, study.name, path.name)
            image = nifti_from_bytes(data, study.name, path.name)
            if role == "label":
                require_label_values(read_array(image, study.name, path.name), 2, study.name, path.name)
            record[role] = {"bytes": data, "path": None}
        record["spacing"] = list(grid_of(image).spacing)
        record["shape"] = list(grid_of(image).shape)
        return record

    def prediction_input(self, study: StudyFiles) -> Path:
        return study.files["pet"].parent

    def ground_truth(self, folder: Path) -> dict[str, Path] | None:
        root = self.find_root(folder)
        return None if root is None else {p.parent.name: p for p in sorted(root.glob("*/mask.nii.gz"))}

    def score(self, prediction, truth, spacing) -> dict:
        return autopet_metrics(prediction, truth, spacing).as_dict()

    def selection_score(self, summary: dict[str, float]) -> float:
        return summary.get("dice", 0.0)


@pytest.fixture
def toy_task(monkeypatch):
    """The toy task registered for one test (the registry is restored afterwards)."""
    monkeypatch.setattr(registry, "_TASKS", dict(registry._TASKS))
    return register_task(ToyTask())


def write_toy_dataset(root: Path) -> Path:
    folder = root / "ToyScans"
    rng = np.random.default_rng(0)
    for case in ("p1-a", "p1-b", "p2-a", "p3-a"):
        mask = np.zeros((8, 8, 8), dtype=np.uint8)
        mask[2:5, 2:5, 2:5] = 1
        (folder / case).mkdir(parents=True)
        for name, data in (("ct", rng.normal(0, 100, mask.shape)), ("pet", mask * 8.0 + 1), ("mask", mask)):
            nib.save(
                nib.Nifti1Image(np.asarray(data, dtype=np.float32 if name != "mask" else np.uint8), AFFINE),
                str(folder / case / f"{name}.nii.gz"),
            )
    return folder


def test_built_in_tasks_are_registered_in_order():
    assert task_names()[:2] == ("autopet", "brain_tumour")
    assert [task.name for task in list_tasks()][:2] == ["autopet", "brain_tumour"]


@pytest.mark.parametrize(
    ("spelling", "name"),
    [
        ("autopet", "autopet"),
        ("AutoPET", "autopet"),
        ("BrainTumour", "brain_tumour"),
        ("brain-tumor", "brain_tumour"),
        ("Task01_BrainTumour", "brain_tumour"),
    ],
)
def test_get_task_accepts_names_and_aliases(spelling, name):
    assert get_task(spelling).name == name


def test_unknown_task_error_lists_the_registered_ones():
    with pytest.raises(UserInputError, match=r"unknown dataset 'brats'; expected one of: autopet, brain_tumour"):
        get_task("brats")


def test_a_second_task_with_a_taken_alias_is_refused(toy_task):
    class Clash(ToyTask):
        name = "other"
        aliases = ("AutoPET",)

    with pytest.raises(ValueError, match="already used by task 'autopet'"):
        register_task(Clash())


def test_task_label_text_and_highest_label():
    assert get_task("autopet").mask_values == "0 background, 1 lesion"
    assert get_task("brain_tumour").max_label == 3
    assert "3 enhancing tumour" in get_task("brain_tumour").mask_values


def test_preprocessing_defaults_come_from_the_task(toy_task):
    config = PreprocessingConfig.for_dataset("toy")
    assert config.modalities == ("ct", "pet") and config.reference_modality == "pet"
    assert config.target_spacing == (4.0, 4.0, 6.0) and config.intensity_windows == {"pet": (0.0, 10.0)}
    autopet = PreprocessingConfig.for_dataset("autopet")
    assert autopet.target_spacing == (2.0, 2.0, 3.0) and autopet.intensity_windows["ct"] == (-100.0, 250.0)


def test_a_new_task_is_loaded_by_the_builder_with_patient_grouped_folds(toy_task, tmp_path):
    write_toy_dataset(tmp_path / "raw")
    ds = load_mirror_dataset("toy", tmp_path / "raw", fold=0, num_folds=3, cache_dir=tmp_path / "cache")
    rows = list(ds["train"]) + list(ds["validation"])
    assert sorted(row["case_id"] for row in rows) == ["p1-a", "p1-b", "p2-a", "p3-a"]
    assert ds["train"].column_names == ["case_id", "patient_id", "ct", "pet", "label", "spacing", "shape"]
    patients = {split: {row["patient_id"] for row in ds[split]} for split in ds}
    assert not patients["train"] & patients["validation"]  # both studies of p1 on one side
    assert rows[0]["spacing"] == [2.0, 2.0, 3.0]


def test_a_new_task_is_evaluated_through_its_layout_and_metrics(toy_task, tmp_path):
    folder = write_toy_dataset(tmp_path / "raw")
    assert sorted(find_ground_truth(tmp_path / "raw")) == ["p1-a", "p1-b", "p2-a", "p3-a"]
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for case in ("p1-a", "p1-b", "p2-a", "p3-a"):
        mask = np.asarray(nib.load(str(folder / case / "mask.nii.gz")).dataobj)
        if case == "p2-a":
            mask = np.zeros_like(mask)  # a missed lesion
        nib.save(nib.Nifti1Image(mask, AFFINE), str(predictions / f"{case}.nii.gz"))
    report = evaluate_folders(predictions, tmp_path / "raw", "toy_scans")
    assert report.columns == ("case_id", "status", "dice", "fpv_ml", "fnv_ml", "message")
    dice = {row["case_id"]: row["dice"] for row in report.rows}
    assert dice == {"p1-a": 1.0, "p1-b": 1.0, "p2-a": 0.0, "p3-a": 1.0}
    assert report.mean["dice"] == pytest.approx(0.75)
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(predictions),
                "--gt",
                str(tmp_path / "raw"),
                "--task",
                "toy_scans",
                "--out",
                str(tmp_path / "m.csv"),
            ]
        )
        == 0
    )


def test_a_new_task_refuses_masks_outside_its_label_map(toy_task, tmp_path):
    write_toy_dataset(tmp_path / "raw")
    predictions = tmp_path / "pred"
    predictions.mkdir()
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), 2, dtype=np.uint8), AFFINE), str(predictions / "p1-a.nii.gz"))
    report = evaluate_folders(predictions, tmp_path / "raw", "toy_scans", skip_bad=True)
    assert report.failures and "expected 0 background, 1 lesion" in report.failures[0][1]


def test_a_new_task_is_found_by_predict_input_dir_and_selects_checkpoints(toy_task, tmp_path):
    from mirror_unet_hf.commands.predict import dataset_studies

    folder = write_toy_dataset(tmp_path / "raw")
    studies = dataset_studies(tmp_path / "raw")
    assert studies == {case: folder / case for case in ("p1-a", "p1-b", "p2-a", "p3-a")}
    assert selection_score({"dice": 0.4}, "toy_scans") == 0.4


def test_phantom_layouts_are_the_tasks_with_a_writer(toy_task, tmp_path):
    from mirror_unet_hf.data.phantoms import phantom_layouts

    assert phantom_layouts() == ("autopet", "brain_tumour", "autopet3")  # the toy task has none
    with pytest.raises(
        UserInputError, match="unknown phantom layout 'toy_scans'; expected autopet or brain_tumour or autopet3"
    ):
        make_phantoms("toy_scans", tmp_path, 1, 0)


def test_every_task_finds_its_own_phantoms(tmp_path):
    for task in list_tasks():
        if not task.has_phantoms:
            continue
        root = make_phantoms(task.name, tmp_path / task.name, 2, 0, shape=(24, 24, 24))
        assert task.find_root(tmp_path / task.name) == root
        assert [other.find_root(tmp_path / task.name) for other in list_tasks() if other is not task] == [
            None for other in list_tasks() if other is not task
        ]
        studies = task.discover(root)
        assert len(studies) == 2 and all(study.problem is None for study in studies)
        record = task.read_study(studies[0])
        assert set(task.modalities) <= set(record) and "label" in record
