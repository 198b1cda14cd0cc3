"""The prepared cache: `mirror-unet prepare`, `load_prepared_dataset`, and reading prepared studies.

Against the exact path (`preprocess_study` on the raw files), a prepared study differs by the storage rounding
only: CT (int16 HU) by at most 0.5 HU / (high - low) after its window, float16 channels by at most 2**-11 of
the value; labels, foreground boxes, patch centres and validation metrics are equal.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from mirror_unet_hf.cli import main as cli_main
from mirror_unet_hf.data import (
    MirrorPatchDataset,
    PreprocessingConfig,
    default_foreground_channels,
    foreground_box,
    load_mirror_dataset,
    make_phantoms,
    prepare_studies,
    preprocess_study,
    sample_patches,
)
from mirror_unet_hf.data.preparation import load_prepared_dataset, prepare_dataset
from mirror_unet_hf.data.prepared import NormalisedView
from mirror_unet_hf.data.prepared_format import EntryFile
from mirror_unet_hf.errors import UserInputError
from mirror_unet_hf.tasks import get_task

AUTOPET = PreprocessingConfig.for_dataset("autopet")
# CT seen through a wide window: the air and table outside the PET's body box are visible to the network
WIDE_CT = PreprocessingConfig(("ct", "pet"), "pet", (2.0, 2.0, 3.0), {"ct": (-1200.0, 3000.0), "pet": (0.0, 15.0)})
CHECKPOINT = Path(__file__).resolve().parents[1] / "demo" / "checkpoint"


def exact_study(task: str, root: Path, case_id: str, config) -> object:
    """The study as `preprocess_study` makes it from the raw files: the reference every prepared read is held to."""
    spec = get_task(task)
    record = spec.read_study(next(study for study in spec.discover(root) if study.case_id == case_id))
    images = {name: record[name]["bytes"] for name in config.modalities}
    return preprocess_study(images, config, label=record["label"]["bytes"], case_id=case_id)


def assert_within_storage_rounding(got: np.ndarray, exact: np.ndarray, config) -> None:
    """Channel by channel, the tolerance the module docstring states."""
    for index, name in enumerate(config.modalities):
        error = np.abs(got[:, index] - exact[:, index]) if got.ndim == 5 else np.abs(got[index] - exact[index])
        reference = np.abs(exact[:, index] if exact.ndim == 5 else exact[index])
        window = dict(config.intensity_windows).get(name)
        if name == "ct":
            bound = 0.5 / (window[1] - window[0]) + 1e-6
        else:
            bound = 2.0**-11 * reference + 1e-6
        assert (error <= bound).all(), f"{name}: max error {error.max()} beyond the storage rounding"


@pytest.fixture(scope="module")
def prepared(autopet_phantoms, tmp_path_factory):
    cache = tmp_path_factory.mktemp("prepared")
    return load_prepared_dataset("autopet", autopet_phantoms, AUTOPET, fold=0, num_folds=3, cache_dir=cache), cache


def test_patches_from_the_cache_match_the_exact_path(prepared, autopet_phantoms):
    splits, cache = prepared
    root = autopet_phantoms / "FDG-PET-CT-Lesions"
    studies = prepare_studies(splits["train"], AUTOPET)
    lesions = 0
    for index, case_id in enumerate(splits["train"]["case_id"]):
        exact = exact_study("autopet", root, case_id, AUTOPET)
        box = foreground_box(exact.image, default_foreground_channels(exact.modalities))
        arrays = studies.training_arrays(index)
        assert arrays["image"].shape == (2, *(s.stop - s.start for s in box))
        crop = exact.label[box].astype(np.uint8)
        assert np.array_equal(arrays["label"], crop) and np.array_equal(arrays["positives"], np.flatnonzero(crop))
        lesions += arrays["positives"].size
        for seed in range(3):
            got = sample_patches(
                arrays["image"], arrays["label"], 24, 6, np.random.default_rng(seed), positives=arrays["positives"]
            )
            want = sample_patches(exact.image, exact.label, 24, 6, np.random.default_rng(seed), box=box)
            assert np.array_equal(got[1], want[1]) and np.array_equal(got[2], want[2]), "same centres and labels"
            assert_within_storage_rounding(got[0], want[0], AUTOPET)
    assert lesions > 0, "some training study has lesions, so positive centres were compared"
    assert not list(cache.rglob("*.arrow")), "prepare keeps no copy of the raw files (no builder Arrow)"


def test_the_patch_dataset_and_augmentation_read_the_cache_within_the_rounding(prepared, autopet_phantoms):
    splits, _ = prepared
    root = autopet_phantoms / "FDG-PET-CT-Lesions"
    for augmentation in ("none", "spatial"):
        dataset = MirrorPatchDataset(
            splits["train"], AUTOPET, 24, patches_per_volume=4, seed=3, augmentation=augmentation
        )
        images, labels, arrays = dataset.study_patches(1)
        exact = exact_study("autopet", root, arrays["case_id"], AUTOPET)
        box = foreground_box(exact.image, default_foreground_channels(exact.modalities))
        exact_arrays = {
            "image": exact.image[(Ellipsis, *box)],
            "label": exact.label[box].astype(np.uint8),
            "positives": np.flatnonzero(exact.label[box]),
            "class_label": arrays["class_label"],
            "case_id": arrays["case_id"],
        }
        dataset.studies.training_arrays = lambda index, given=exact_arrays: given  # the exact arrays instead
        want_images, want_labels, _ = dataset.study_patches(1)
        assert np.array_equal(labels, want_labels)
        assert_within_storage_rounding(images, want_images, AUTOPET)


@pytest.mark.skipif(not (CHECKPOINT / "config.json").is_file(), reason="no committed demo/checkpoint")
def test_validation_studies_and_metrics_equal_the_exact_path(autopet_phantoms, tmp_path):
    from mirror_unet_hf import MirrorUNetModel
    from mirror_unet_hf.validation import validate

    root = autopet_phantoms / "FDG-PET-CT-Lesions"
    splits = load_prepared_dataset("autopet", autopet_phantoms, WIDE_CT, fold=0, num_folds=3, cache_dir=tmp_path)
    for study in prepare_studies(splits["validation"], WIDE_CT):
        exact = exact_study("autopet", root, study.case_id, WIDE_CT)
        assert study.image.shape == exact.image.shape, "the whole grid, not the body box"
        assert_within_storage_rounding(study.image, exact.image, WIDE_CT)
        box = foreground_box(exact.image, [1])
        outside = np.ones(exact.image.shape[1:], bool)
        outside[box] = False
        assert outside.any() and np.ptp(study.image[0][outside]) > 0.01, "CT outside the body box is kept"
        assert np.array_equal(study.label, exact.label)
        assert np.array_equal(study.affine, exact.affine) and np.array_equal(
            study.reference_affine, exact.reference_affine
        )
        assert study.spacing == exact.spacing and study.reference_shape == exact.reference_shape
        assert np.array_equal(study.restore(study.label, order=0), exact.restore(exact.label, order=0))

    model = MirrorUNetModel.from_pretrained(CHECKPOINT).eval()
    splits = load_prepared_dataset("autopet", autopet_phantoms, model.config, fold=0, num_folds=3, cache_dir=tmp_path)
    cached = validate(model, prepare_studies(splits["validation"], model.config), "autopet")
    exact = [exact_study("autopet", root, case, model.config) for case in splits["validation"]["case_id"]]
    assert cached == validate(model, exact, "autopet")
    assert any(row["fpv_ml"] or row["dice"] for row in cached), "the model predicts something, so metrics can differ"


def test_z_scored_mri_is_stored_z_scored_within_float16_rounding(brain_phantoms, tmp_path):
    config = PreprocessingConfig(("flair", "t1gd"), "t1gd", None, {})
    splits = load_prepared_dataset("brain_tumour", brain_phantoms, config, fold=0, num_folds=3, cache_dir=tmp_path)
    studies = prepare_studies(splits["train"], config)
    root = brain_phantoms / "Task01_BrainTumour"
    for index, study in enumerate(studies):
        exact = exact_study("brain_tumour", root, study.case_id, config)
        assert_within_storage_rounding(study.image, exact.image, config)
        assert np.array_equal(study.label, exact.label)
        entry = EntryFile(studies.files[index])
        assert {m["stored"] for m in entry.meta["modalities"].values()} == {"normalised"}


def test_the_lazy_view_slices_like_the_array_it_stands_for(prepared):
    splits, _ = prepared
    studies = prepare_studies(splits["train"], AUTOPET)
    view = studies.training_arrays(0)["image"]
    assert isinstance(view, NormalisedView)
    whole = np.asarray(view)
    assert whole.shape == view.shape and whole.dtype == np.float32
    keys = [
        (Ellipsis, slice(3, 40), slice(0, 5), slice(10, 38)),
        (0, slice(None), slice(2, 3)),
        (slice(1, 2), slice(-10, None)),
        (Ellipsis, slice(30, 100)),
        1,
        (Ellipsis, slice(None, None, 2)),
        (slice(None), 4, slice(1, 9)),
    ]
    for key in keys:
        assert np.array_equal(view[key], whole[key]), key


def test_load_prepared_dataset_gives_the_folds_and_columns_of_load_mirror_dataset(autopet_phantoms, tmp_path):
    reference = load_mirror_dataset("autopet", autopet_phantoms, fold=1, num_folds=3, cache_dir=tmp_path / "builder")
    splits = load_prepared_dataset("autopet", autopet_phantoms, fold=1, num_folds=3, cache_dir=tmp_path / "cache")
    for name in ("train", "validation"):
        for column in ("case_id", "patient_id", "diagnosis", "spacing", "shape"):
            assert splits[name][column] == reference[name][column], (name, column)
    threes = tmp_path / "autopet3"
    make_phantoms("autopet3", threes, n=6, seed=2, shape=(32, 32, 24))
    official = load_mirror_dataset("autopet3", threes, fold=0, cache_dir=tmp_path / "builder")
    splits = load_prepared_dataset("autopet3", threes, fold=0, cache_dir=tmp_path / "cache")
    assert splits["validation"]["case_id"] == official["validation"]["case_id"]
    assert splits["train"]["tracer"] == official["train"]["tracer"]


def _copy(phantoms: Path, tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    shutil.copytree(phantoms, raw)
    return raw


def test_the_cache_key_follows_the_raw_files_and_the_stored_settings(autopet_phantoms, tmp_path):
    raw = _copy(autopet_phantoms, tmp_path)
    cache = tmp_path / "cache"
    first = prepare_dataset("autopet", raw, cache, progress=False)
    assert (first.new, first.reused, len(first.rows)) == (6, 0, 6)
    again = prepare_dataset("autopet", raw, cache, progress=False)
    assert (again.new, again.reused, again.folder) == (0, 6, first.folder)

    suv = sorted((raw / "FDG-PET-CT-Lesions").glob("*/*/SUV.nii.gz"))[0]
    stamp = suv.stat()
    os.utime(suv, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    edited = prepare_dataset("autopet", raw, cache, progress=False)
    assert (edited.new, edited.reused) == (1, 5), "only the edited study is prepared again"
    assert len(list((first.folder / "studies").glob("*.safetensors"))) == 6, "its old file is removed"
    assert len(list(first.folder.glob("index-*.json"))) == 1

    windows = PreprocessingConfig(("ct", "pet"), "pet", (2.0, 2.0, 3.0), {"ct": (-500.0, 500.0), "pet": (0.0, 8.0)})
    assert prepare_dataset("autopet", raw, cache, windows, progress=False).folder == first.folder, (
        "windows are applied when reading, so they share the cache"
    )
    coarse = PreprocessingConfig(("ct", "pet"), "pet", (4.0, 4.0, 6.0), dict(AUTOPET.intensity_windows))
    other = prepare_dataset("autopet", raw, cache, coarse, progress=False)
    assert other.folder != first.folder and other.new == 6


def test_two_processes_write_the_same_cache_as_one(autopet_phantoms, tmp_path):
    one = prepare_dataset("autopet", autopet_phantoms, tmp_path / "one", progress=False)
    two = prepare_dataset("autopet", autopet_phantoms, tmp_path / "two", num_proc=2, progress=False)
    assert one.rows == two.rows and one.new == two.new == 6
    for row in one.rows:
        name = row["prepared_file"]
        assert (one.folder / "studies" / name).read_bytes() == (two.folder / "studies" / name).read_bytes()


def _prepare_command(raw: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mirror_unet_hf.cli", "prepare", "--dataset", "autopet", "--data_dir", str(raw)] + [
        "--cache_dir",
        str(cache),
        *extra,
    ]


def test_a_killed_prepare_continues_where_it_stopped(tmp_path):
    raw = tmp_path / "raw"
    make_phantoms("autopet", raw, n=8, seed=5, shape=(80, 80, 64))
    reference = prepare_dataset("autopet", raw, tmp_path / "reference", progress=False)
    cache = tmp_path / "cache"
    process = subprocess.Popen(_prepare_command(raw, cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if list(cache.glob("mirror-unet-prepared/*/studies/*.safetensors")):
            break
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, "killed while preparing"
    (folder,) = cache.glob("mirror-unet-prepared/*")
    assert not list(folder.glob("index-*.json")), "no index before every study is done"
    present = sorted(path.name for path in (folder / "studies").glob("*.safetensors"))
    assert 1 <= len(present) < 8
    for name in present:  # complete files only, equal to an uninterrupted run's
        assert (folder / "studies" / name).read_bytes() == (reference.folder / "studies" / name).read_bytes()

    result = subprocess.run(_prepare_command(raw, cache), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"{8 - len(present)} new, {len(present)} reused, 0 skipped" in result.stdout
    assert not [p for p in (folder / "studies").iterdir() if p.name.startswith(".")], "temporaries are removed"
    names = sorted(path.name for path in (folder / "studies").iterdir())
    assert names == sorted(row["prepared_file"] for row in reference.rows)
    for name in names:
        assert (folder / "studies" / name).read_bytes() == (reference.folder / "studies" / name).read_bytes()


def test_a_bad_study_is_one_clear_error_or_listed_and_left_out(autopet_phantoms, tmp_path, capsys):
    raw = _copy(autopet_phantoms, tmp_path)
    bad = sorted((raw / "FDG-PET-CT-Lesions").glob("*/*/SUV.nii.gz"))[2]
    bad.write_bytes(b"not a nifti file")
    study = f"{bad.parent.parent.name}/{bad.parent.name}"
    cache = tmp_path / "cache"
    argv = ["prepare", "--dataset", "autopet", "--data_dir", str(raw), "--cache_dir", str(cache)]
    assert cli_main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert error.startswith("mirror-unet prepare: error: ") and study in error and "SUV.nii.gz" in error
    (folder,) = cache.glob("mirror-unet-prepared/*")
    assert not list(folder.glob("index-*.json"))
    assert len(list((folder / "studies").glob("*.safetensors"))) == 2, "the studies before it are kept for a rerun"
    assert not [p for p in (folder / "studies").iterdir() if p.name.startswith(".")]

    assert cli_main([*argv, "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert f"skipped: study {study!r}" in out and "5 studies" in out and "1 skipped" in out
    with pytest.raises(UserInputError, match="SUV.nii.gz"):
        load_prepared_dataset("autopet", raw, fold=0, num_folds=3, cache_dir=cache)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_prepared_dataset("autopet", raw, fold=0, num_folds=3, cache_dir=cache, skip_bad=True)
    assert any("skipped 1 of 6 studies" in str(w.message) for w in caught)
    assert len(splits["train"]) + len(splits["validation"]) == 5


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num_proc", "0"], "--num_proc must be at least 1"),
        (["--preset", "nope"], "--preset 'nope' is not a preset"),
        (["--preset", "brats-v1"], "modality 'flair' is not one of the autopet dataset's"),
    ],
)
def test_prepare_usage_mistakes_are_one_line(autopet_phantoms, tmp_path, capsys, extra, message):
    argv = ["prepare", "--dataset", "autopet", "--data_dir", str(autopet_phantoms), "--cache_dir", str(tmp_path)]
    assert cli_main([*argv, *extra]) == 2
    assert message in capsys.readouterr().err


def test_a_cache_made_for_other_settings_is_refused_naming_them(prepared):
    splits, _ = prepared
    other = PreprocessingConfig(("ct", "pet"), "pet", (4.0, 4.0, 6.0), dict(AUTOPET.intensity_windows))
    with pytest.raises(UserInputError, match="target_spacing"):
        prepare_studies(splits["train"], other)
    z_scored = PreprocessingConfig(("ct", "pet"), "pet", (2.0, 2.0, 3.0), {"pet": (0.0, 15.0)})
    with pytest.raises(UserInputError, match="'ct' stored raw"):
        prepare_studies(splits["train"], z_scored)


def test_train_reads_the_cache_prepare_wrote(autopet_phantoms, tmp_path):
    cache = tmp_path / "cache"
    assert (
        cli_main(["prepare", "--dataset", "autopet", "--data_dir", str(autopet_phantoms), "--cache_dir", str(cache)])
        == 0
    )
    (folder,) = cache.glob("mirror-unet-prepared/*")
    before = {p.name: p.stat().st_mtime_ns for p in folder.rglob("*")}
    command = [sys.executable, str(Path(__file__).resolve().parents[1] / "train" / "train.py")]
    command += ["--preset", "autopet-v3", "--model_overrides", json.dumps({"channels": [4, 8, 16, 32, 64]})]
    command += ["--patch_size", "32", "32", "32", "--data_dir", str(autopet_phantoms), "--cache_dir", str(cache)]
    command += ["--output_dir", str(tmp_path / "run"), "--max_steps", "2", "--eval_steps", "2", "--num_folds", "3"]
    command += ["--checkpointing_steps", "2", "--report_to", "none", "--num_workers", "0"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Preparing studies" not in result.stderr, "every study was prepared already"
    assert {p.name: p.stat().st_mtime_ns for p in folder.rglob("*")} == before
    assert list(cache.iterdir()) == [cache / "mirror-unet-prepared"], "nothing else is written to the cache"
    metrics = json.loads((tmp_path / "run" / "final" / "metrics.json").read_text())
    assert metrics["num_studies"] == 2
