"""Bad and random input to ``mirror-unet predict`` and ``mirror-unet evaluate``: a user mistake is one line on
stderr and exit code 2, ``--skip-bad`` goes on and lists every failure (exit 1), and no output or temporary
file is ever left half written."""

from __future__ import annotations

import csv
import errno
import gzip
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest_fuzz import (  # noqa: F401 - fuzz_report reports the counts at the end of the session
    AFFINE,
    FUZZ,
    HUGE_VOXELS,
    SHAPE,
    UNREADABLE,
    UNUSABLE,
    fuzz_report,
    leftovers,
    nifti_bytes,
    small_volume,
    tried,
)
from hypothesis import given
from hypothesis import strategies as st

from mirror_unet_hf.cli import main

BAD_INPUTS = {**UNREADABLE, **UNUSABLE}
PROGRESS_BAR = re.compile(r"\|.*\[\d\d:\d\d")  # tqdm: "studies:   3%|▎    | 1/35 [00:00<00:00, ...]"
NAME_MAX = os.pathconf("/", "PC_NAME_MAX")


def write_study(folder: Path, seed: int, ct: bytes | None = None, pet: bytes | None = None) -> Path:
    """An AutoPET study folder (CTres, SUV, SEG) of SHAPE voxels; ``ct``/``pet`` replace a file's bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    suv = small_volume(SHAPE, seed)
    (folder / "CTres.nii.gz").write_bytes(ct if ct is not None else nifti_bytes(suv * 40 - 100))
    (folder / "SUV.nii.gz").write_bytes(pet if pet is not None else nifti_bytes(suv))
    (folder / "SEG.nii.gz").write_bytes(nifti_bytes((suv > 8).astype(np.uint8)))
    return folder


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return write_study(tmp_path_factory.mktemp("study") / "good", seed=1)


def predict(model_dir, ct, pet, out, *extra):
    return main(
        [
            "predict",
            "--model",
            str(model_dir),
            "--input",
            f"ct={ct}",
            "--input",
            f"pet={pet}",
            "--out",
            str(out),
            *extra,
        ]
    )


def one_error_line(capsys) -> str:
    """The one error line on stderr (progress bars aside), and no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS_BAR.search(line)]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------------ predict


@pytest.mark.parametrize("role", ["ct", "pet"])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_predict_refuses_a_bad_input_file_in_one_line_and_writes_nothing(
    tmp_path, model_dir, study, capsys, case, role
):
    data, fragment = BAD_INPUTS[case]
    if case == "another grid, 10 m away" and role == "pet":
        fragment = "does not overlap"  # the CT (on its own grid) is what does not overlap the moved PET
    bad = tmp_path / f"bad {role} ünï.nii.gz"
    bad.write_bytes(data)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    files = {"ct": study / "CTres.nii.gz", "pet": study / "SUV.nii.gz", role: bad}
    tried("mirror-unet predict")
    assert predict(model_dir, files["ct"], files["pet"], out_dir / "seg.nii.gz") == 2
    line = one_error_line(capsys)
    assert line.startswith("mirror-unet predict: error: ") and fragment in line, line
    assert list(out_dir.iterdir()) == []


def test_predict_refuses_a_reference_grid_that_resampling_would_explode(tmp_path, model_dir, capsys):
    huge = tmp_path / "huge.nii.gz"
    huge.write_bytes(HUGE_VOXELS)
    tried("mirror-unet predict")
    assert predict(model_dir, huge, huge, tmp_path / "seg.nii.gz") == 2
    assert "would make" in one_error_line(capsys)
    assert not (tmp_path / "seg.nii.gz").exists()


def corrupt(data: bytes, edits, cut) -> bytes:
    data = bytearray(data)
    for where, value in edits:
        data[min(int(where * len(data)), len(data) - 1)] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    return bytes(data)


EDITS = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=6)
CUT = st.none() | st.floats(0, 1)


@FUZZ
@given(edits=EDITS, cut=CUT, gz=st.booleans())
def test_predict_on_randomly_corrupted_input_exits_0_or_2_and_leaves_no_partial_file(
    tmp_path_factory, model_dir, study, edits, cut, gz
):
    folder = tmp_path_factory.mktemp("corrupt")
    original = (study / "CTres.nii.gz").read_bytes()
    ct = folder / ("CTres.nii.gz" if gz else "CTres.nii")
    ct.write_bytes(corrupt(original if gz else gzip.decompress(original), edits, cut))
    out = folder / "out" / "seg.nii.gz"
    out.parent.mkdir()
    tried("mirror-unet predict (byte corruption)")
    code = predict(model_dir, ct, study / "SUV.nii.gz", out)
    assert code in (0, 2)
    if code == 2:
        tried("mirror-unet predict (byte corruption): refused")
    assert out.exists() == (code == 0)
    assert leftovers(out.parent) == []


@pytest.mark.parametrize(
    "name",
    [
        "seg with spaces.nii.gz",
        "ünïcødé ✓ 病灶.nii.gz",
        "..seg.nii.gz",
        "a..b.nii.gz",
        "x" * (NAME_MAX - 7) + ".nii.gz",
    ],
    ids=["spaces", "unicode", "leading dots", "inner dots", "longest allowed name"],
)
def test_predict_writes_any_valid_file_name(tmp_path, model_dir, study, name):
    folder = tmp_path / "in ünï"
    folder.mkdir()
    ct, pet = folder / name.replace("seg", "ct"), folder / name.replace("seg", "pet")
    if ct == pet:  # the long name has no "seg" in it
        ct, pet = folder / "ct.nii.gz", folder / "pet.nii.gz"
    ct.write_bytes((study / "CTres.nii.gz").read_bytes())
    pet.write_bytes((study / "SUV.nii.gz").read_bytes())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    tried("mirror-unet predict")
    assert predict(model_dir, ct, pet, out_dir / name) == 0
    assert [p.name for p in out_dir.iterdir()] == [name]
    assert nib.load(out_dir / name).shape == SHAPE


def test_predict_refuses_a_file_name_longer_than_the_file_system_allows(tmp_path, model_dir, study, capsys):
    out = tmp_path / ("x" * (NAME_MAX + 1) + ".nii.gz")
    assert predict(model_dir, study / "CTres.nii.gz", study / "SUV.nii.gz", out) == 2
    assert "File name too long" in one_error_line(capsys)


def test_predict_input_dir_with_skip_bad_writes_the_good_studies_and_lists_every_bad_one(tmp_path, model_dir, capsys):
    root = tmp_path / "FDG-PET-CT-Lesions"
    good = [
        write_study(root / name / "study 1", seed=i) for i, name in enumerate(["PETCT_a good", "PETCT_zz ünï good"])
    ]
    bad = {}
    for i, case in enumerate(sorted(BAD_INPUTS)):
        patient = f"PETCT_m{i:02d}"
        write_study(
            root / patient / "study 1",
            seed=i,
            pet=BAD_INPUTS[case][0] if "grid" not in case else None,
            ct=BAD_INPUTS[case][0] if "grid" in case else None,
        )
        bad[f"{patient}_study 1"] = BAD_INPUTS[case][1]
    out_dir = tmp_path / "pred"
    args = ["predict", "--model", str(model_dir), "--input-dir", str(tmp_path), "--out-dir", str(out_dir)]
    tried("mirror-unet predict --input-dir", len(good) + len(bad))

    assert main(args) == 2  # without --skip-bad the first bad study stops the run with one line
    assert "PETCT_m00" in one_error_line(capsys)

    assert main([*args, "--skip-bad", "--overwrite"]) == 1
    err = capsys.readouterr().err
    written = sorted(p.name for p in out_dir.iterdir())
    assert written == sorted(f"{s.parent.name}_{s.name}.nii.gz" for s in good)
    for case_id, fragment in bad.items():
        failure = next(line for line in err.splitlines() if line.startswith(f"failed: {case_id}: "))
        assert fragment in failure, failure
    assert "Traceback" not in err
    assert leftovers(out_dir) == []


# ------------------------------------------------------------------------------------------ evaluate

GRID_SHIFTED = AFFINE.copy()
GRID_SHIFTED[0, 3] = 1.0


def mask(values=None, dtype=np.uint8, affine=AFFINE, shape=SHAPE) -> bytes:
    data = np.zeros(shape, dtype)
    data[2:5, 2:5, 2:5] = 1 if values is None else values
    return nifti_bytes(data, affine)


BAD_MASKS = {
    **dict(UNREADABLE.items()),
    "label 7 in an AutoPET mask": (mask(7), "has label values [7]"),
    "label 255": (mask(255), "has label values [255]"),
    "negative label": (mask(-1, np.int16), "has label values [-1]"),
    "fractional (a probability map)": (mask(0.5, np.float32), "fractional values such as [0.5]"),
    "NaN in a float mask": (mask(np.nan, np.float32), "NaN/Inf"),
    "2D": (nifti_bytes(np.zeros(SHAPE[:2], np.uint8)), "expected a 3D"),
    "4D with 2 volumes": (nifti_bytes(np.zeros((*SHAPE, 2), np.uint8)), "expected a 3D"),
    "another shape": (mask(shape=(12, 10, 7)), "(12, 10, 7)"),
    "grid shifted by half a voxel": (mask(affine=GRID_SHIFTED), "affine differs"),
}


@pytest.fixture()
def folders(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    for case in ("case 1", "case ünï 2"):
        (gt / f"{case}.nii.gz").write_bytes(mask())
        (pred / f"{case}.nii.gz").write_bytes(mask())
    return pred, gt


def evaluate(pred, gt, out, *extra):
    return main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--task", "autopet", "--out", str(out), *extra])


@pytest.mark.parametrize("side", ["pred", "gt"])
@pytest.mark.parametrize("case", sorted(BAD_MASKS))
def test_evaluate_refuses_a_bad_mask_in_one_line_and_writes_nothing(tmp_path, folders, capsys, case, side):
    data, fragment = BAD_MASKS[case]
    pred, gt = folders
    target = (pred if side == "pred" else gt) / "case 1.nii.gz"
    target.write_bytes(data)
    out = tmp_path / "report" / "metrics.csv"
    tried("mirror-unet evaluate")
    assert evaluate(pred, gt, out, "--json", str(tmp_path / "report" / "metrics.json")) == 2
    line = one_error_line(capsys)
    assert line.startswith("mirror-unet evaluate: error: ") and fragment in line and "case 1.nii.gz" in line, line
    assert not (tmp_path / "report").exists() or list((tmp_path / "report").iterdir()) == []


def test_evaluate_skip_bad_scores_the_rest_and_lists_every_failure(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    cases = {f"bad {i:02d}": BAD_MASKS[case] for i, case in enumerate(sorted(BAD_MASKS))}
    for case_id, (data, _) in cases.items():
        (gt / f"{case_id}.nii.gz").write_bytes(mask())
        (pred / f"{case_id}.nii.gz").write_bytes(data)
    (gt / "good.nii.gz").write_bytes(mask())
    (pred / "good.nii.gz").write_bytes(mask())
    out = tmp_path / "metrics.csv"
    tried("mirror-unet evaluate", len(cases) + 1)
    assert evaluate(pred, gt, out, "--skip-bad") == 1
    err = capsys.readouterr().err
    with open(out, newline="", encoding="utf-8") as stream:
        rows = {row["case_id"]: row for row in csv.DictReader(stream)}
    assert rows["good"]["status"] == "ok" and float(rows["good"]["dice"]) == 1.0
    for case_id, (_, fragment) in cases.items():
        assert rows[case_id]["status"] == "error" and fragment in rows[case_id]["message"]
        assert f"failed: {case_id}: " in err
    assert "Traceback" not in err and leftovers(tmp_path) == []


def test_evaluate_skip_bad_reports_an_internal_error_with_its_traceback_and_goes_on(
    tmp_path, folders, capsys, monkeypatch
):
    from mirror_unet_hf.tasks import get_task

    task = get_task("autopet")
    real = task.score

    def broken_on_case_1(pred, gt, spacing):
        if broken_on_case_1.calls == 0:
            broken_on_case_1.calls += 1
            raise ZeroDivisionError("a bug")
        return real(pred, gt, spacing)

    broken_on_case_1.calls = 0
    monkeypatch.setattr(task, "score", broken_on_case_1)
    pred, gt = folders
    assert evaluate(pred, gt, tmp_path / "m.csv", "--skip-bad") == 1
    err = capsys.readouterr().err
    assert "failed: case 1: internal error: ZeroDivisionError: a bug" in err
    assert "Traceback (most recent call last)" in err
    broken_on_case_1.calls = 0
    with pytest.raises(ZeroDivisionError):  # without --skip-bad an internal error keeps its traceback
        evaluate(pred, gt, tmp_path / "m2.csv")
    assert not (tmp_path / "m2.csv").exists()


@FUZZ
@given(edits=EDITS, cut=CUT, gz=st.booleans(), skip_bad=st.booleans())
def test_evaluate_on_a_randomly_corrupted_mask_never_crashes(tmp_path_factory, edits, cut, gz, skip_bad):
    folder = tmp_path_factory.mktemp("evaluate")
    (folder / "gt").mkdir()
    (folder / "pred").mkdir()
    (folder / "gt" / "a.nii.gz").write_bytes(mask())
    (folder / "pred" / ("a.nii.gz" if gz else "a.nii")).write_bytes(
        corrupt(mask() if gz else gzip.decompress(mask()), edits, cut)
    )
    tried("mirror-unet evaluate (byte corruption)")
    code = evaluate(folder / "pred", folder / "gt", folder / "m.csv", *(["--skip-bad"] if skip_bad else []))
    assert code in ((0, 1) if skip_bad else (0, 2))
    if code:
        tried("mirror-unet evaluate (byte corruption): refused")
    assert (folder / "m.csv").exists() == (code != 2)
    assert leftovers(folder) == []


def test_evaluate_output_that_cannot_be_written_is_a_user_error(tmp_path, folders, capsys):
    pred, gt = folders
    (tmp_path / "a file").write_text("x")
    for out in (tmp_path / "a file" / "metrics.csv", tmp_path / ("m" * (NAME_MAX + 1) + ".csv")):
        tried("mirror-unet evaluate")
        assert evaluate(pred, gt, out) == 2
        line = one_error_line(capsys)
        assert "is a file" in line or os.strerror(errno.ENAMETOOLONG) in line, line
    assert leftovers(tmp_path) == []
