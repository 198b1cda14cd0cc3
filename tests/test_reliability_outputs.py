"""Outputs are never silently overwritten: predict, evaluate, make-phantoms, train and push refuse existing
results unless asked (``--overwrite``, ``--overwrite_output_dir`` or a resume), and a refused run writes nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest_fuzz import fuzz_report, leftovers, nifti_bytes, small_volume, tried  # noqa: F401
from hub_server import hub_fixture  # noqa: F401 - the `hub` fixture

from mirror_unet_hf import MirrorUNetConfig, MirrorUNetModel
from mirror_unet_hf.cli import main
from mirror_unet_hf.errors import UserInputError
from mirror_unet_hf.hub import push_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (12, 10, 8)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("study") / "PETCT_a" / "study 1"
    folder.mkdir(parents=True)
    suv = small_volume(SHAPE, 1)
    (folder / "CTres.nii.gz").write_bytes(nifti_bytes(suv * 40 - 100))
    (folder / "SUV.nii.gz").write_bytes(nifti_bytes(suv))
    (folder / "SEG.nii.gz").write_bytes(nifti_bytes((suv > 8).astype(np.uint8)))
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def predict(model_dir, study, out, *extra):
    return main(["predict", "--model", str(model_dir), "--study", str(study), "--out", str(out), *extra])


# ------------------------------------------------------------------------------------------ predict


@pytest.mark.parametrize("existing", ["seg.nii.gz", "lesions.csv"])
def test_predict_refuses_an_existing_output_and_touches_nothing(tmp_path, model_dir, study, capsys, existing):
    (tmp_path / existing).write_bytes(b"precious")
    before = snapshot(tmp_path)
    tried("overwrite refusal")
    assert predict(model_dir, study, tmp_path / "seg.nii.gz", "--lesions", str(tmp_path / "lesions.csv")) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("existing", ["lesions.json", "branches/seg_ct.nii.gz"])
def test_predict_checks_every_output_before_writing_any(tmp_path, model_dir, study, existing):
    (tmp_path / existing).parent.mkdir(exist_ok=True)
    (tmp_path / existing).write_bytes(b"precious")
    before = snapshot(tmp_path)
    code = predict(
        model_dir,
        study,
        tmp_path / "seg.nii.gz",
        "--lesions",
        str(tmp_path / "lesions.csv"),
        "--save-branches",
        str(tmp_path / "branches"),
    )
    assert code == 2 and snapshot(tmp_path) == before


def test_predict_input_dir_refuses_existing_predictions_and_overwrite_replaces_them(tmp_path, model_dir, study, capsys):
    out_dir = tmp_path / "pred"
    out_dir.mkdir()
    (out_dir / "PETCT_a_study 1.nii.gz").write_bytes(b"precious")
    args = ["predict", "--model", str(model_dir), "--input-dir", str(study.parent.parent), "--out-dir", str(out_dir)]
    tried("overwrite refusal")
    assert main(args) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (out_dir / "PETCT_a_study 1.nii.gz").read_bytes() == b"precious"
    assert main([*args, "--overwrite"]) == 0
    assert (out_dir / "PETCT_a_study 1.nii.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert leftovers(out_dir) == []


# ------------------------------------------------------------------------------------------ evaluate


@pytest.mark.parametrize("existing", ["metrics.csv", "metrics.json"])
def test_evaluate_refuses_either_existing_output_and_writes_neither(tmp_path, study, capsys, existing):
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(study / "SEG.nii.gz", pred / "PETCT_a_study 1.nii.gz")
    (tmp_path / existing).write_text("precious")
    args = [
        "evaluate",
        "--pred",
        str(pred),
        "--gt",
        str(study.parent.parent),
        "--task",
        "autopet",
        "--out",
        str(tmp_path / "metrics.csv"),
        "--json",
        str(tmp_path / "metrics.json"),
    ]
    tried("overwrite refusal")
    assert main(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.glob("metrics.*")) == [existing]
    assert main([*args, "--overwrite"]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["task"] == "autopet"
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------ make-phantoms


def phantoms(out: Path, seed: int, *extra) -> int:
    return main(
        [
            "make-phantoms",
            "--layout",
            "autopet",
            "--out",
            str(out),
            "--n",
            "2",
            "--seed",
            str(seed),
            "--shape",
            "24",
            "24",
            "16",
            *extra,
        ]
    )


def test_make_phantoms_refuses_an_existing_dataset_or_metadata_csv_and_overwrite_replaces_both(tmp_path, capsys):
    out = tmp_path / "phantoms"
    assert phantoms(out, 0) == 0
    first = snapshot(out)
    tried("overwrite refusal", 2)
    assert phantoms(out, 1) == 2
    assert "FDG-PET-CT-Lesions already exists; pass --overwrite" in capsys.readouterr().err
    shutil.rmtree(out / "FDG-PET-CT-Lesions")  # the metadata CSV alone is a result too
    assert phantoms(out, 1) == 2
    assert "Clinical Metadata FDG PET_CT Lesions.csv already exists" in capsys.readouterr().err
    assert phantoms(out, 0, "--overwrite") == 0
    assert snapshot(out) == first  # the same seed writes identical files
    assert phantoms(out, 1, "--overwrite") == 0
    second = snapshot(out)
    assert second.keys() != first.keys() or second != first
    assert leftovers(out) == []


def test_make_phantoms_refuses_a_file_as_the_output_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert phantoms(tmp_path / "file", 0) == 2
    assert "is a file; expected a folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ train


def run_train(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": os.environ.get("HF_HOME", "/tmp/hf-home-tests"), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train" / "train.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_train_overwrite_output_dir_starts_a_clean_run(tmp_path):
    from mirror_unet_hf.data import make_phantoms

    make_phantoms("autopet", tmp_path / "data", 4, seed=0, shape=(48, 48, 32))
    out = tmp_path / "run"
    old = out / "checkpoints" / "step_2"
    old.mkdir(parents=True)
    (old / "trainer_state.json").write_text(json.dumps({"step": 2, "from": "the previous run"}))
    tried("overwrite refusal")
    result = run_train(
        [
            "--preset",
            "autopet-v2",
            "--model_overrides",
            json.dumps({"channels": [4, 8, 16, 32, 64], "norm": "instance"}),
            "--patch_size",
            "32",
            "32",
            "32",
            "--data_dir",
            str(tmp_path / "data"),
            "--cache_dir",
            str(tmp_path / "cache"),
            "--num_workers",
            "0",
            "--report_to",
            "none",
            "--max_steps",
            "2",
            "--checkpointing_steps",
            "2",
            "--num_folds",
            "2",
            "--output_dir",
            str(out),
            "--overwrite_output_dir",
        ]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "from" not in json.loads((old / "trainer_state.json").read_text())


# ------------------------------------------------------------------------------------------ push


def test_push_refuses_a_repo_that_already_holds_weights(hub, model_dir, tmp_path):
    push_checkpoint(model_dir, "tester/once", token=hub.token, endpoint=hub.url)
    commits = len(hub.history("tester/once"))
    other = tmp_path / "other"
    torch.manual_seed(1)
    MirrorUNetModel(MirrorUNetConfig.from_pretrained(model_dir)).save_pretrained(other)  # other weights
    tried("overwrite refusal")
    try:
        push_checkpoint(other, "tester/once", token=hub.token, endpoint=hub.url)
    except UserInputError as error:
        assert "overwrite" in str(error)
    assert len(hub.history("tester/once")) == commits, "a second push made a new commit over the weights"
