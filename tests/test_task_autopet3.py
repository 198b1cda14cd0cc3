"""autoPET III/IV in nnU-Net's layout (task ``autopet3``): rows, official and fallback folds, bad inputs, predict
and evaluate (with FDG and PSMA means), and the PSMA phantoms.

Most tests write a tiny folder of 16³ studies in the real layout; only the phantom tests render phantoms.
"""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mirror_unet_hf.cli import main
from mirror_unet_hf.data import load_mirror_dataset
from mirror_unet_hf.data.splits import assign_folds
from mirror_unet_hf.errors import UserInputError
from mirror_unet_hf.evaluation import evaluate_folders
from mirror_unet_hf.inference import study_inputs
from mirror_unet_hf.tasks import detect_task, get_task

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])
VOXEL_ML = 2.0 * 2.0 * 3.0 / 1000.0
FOLDER = "PSMA-FDG-PET-CT-Lesions"
CASES = (
    "fdg_aaa_01-02-2020",
    "fdg_aaa_07-02-2020",
    "fdg_bbb_03-03-2021",
    "fdg_ccc_04-04-2019",
    "psma_ddd_2020-01-01",
    "psma_eee_2021-05-05",
    "psma_fff_2019-09-09",
)
BAD = "psma_eee_2021-05-05"


def _save(array, path: Path, affine=AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def _lesion() -> np.ndarray:
    label = np.zeros((16, 16, 16), np.uint8)
    label[4:6, 4:6, 4:6] = 1  # 8 voxels
    return label


def write_autopet3(parent: Path, cases=CASES, splits=None) -> Path:
    """A tiny autoPET III/IV folder: CT, PET and a 2x2x2 lesion per case, dataset.json, optional splits."""
    folder = parent / FOLDER
    rng = np.random.default_rng(0)
    for case in cases:
        label = _lesion()
        _save((rng.normal(0, 50, label.shape)).astype(np.float32), folder / "imagesTr" / f"{case}_0000.nii.gz")
        _save(
            (1.0 + 6.0 * label + rng.random(label.shape)).astype(np.float32),
            folder / "imagesTr" / f"{case}_0001.nii.gz",
        )
        _save(label, folder / "labelsTr" / f"{case}.nii.gz")
    manifest = {
        "channel_names": {"0": "CT", "1": "PET"},
        "labels": {"background": 0, "tumor": 1},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(manifest))
    if splits is not None:
        (folder / "splits_final.json").write_text(json.dumps(splits))
    return folder


def _load(root: Path, tmp_path: Path, **kwargs):
    kwargs.setdefault("num_folds", 2)
    return load_mirror_dataset("autopet3", root, cache_dir=tmp_path / "cache", **kwargs)


def _rows(data) -> list[dict]:
    return [row for split in ("train", "validation") for row in data[split]]


# ------------------------------------------------------------------------------------------------ rows


def test_rows_carry_case_patient_tracer_and_the_images(tmp_path):
    folder = write_autopet3(tmp_path / "raw")
    data = _load(tmp_path / "raw", tmp_path)
    assert data["train"].column_names == ["case_id", "patient_id", "tracer", "ct", "pet", "label", "spacing", "shape"]
    rows = {row["case_id"]: row for row in _rows(data)}
    assert sorted(rows) == sorted(CASES)
    assert rows["fdg_aaa_07-02-2020"]["patient_id"] == "aaa" and rows["fdg_aaa_07-02-2020"]["tracer"] == "fdg"
    assert rows["psma_ddd_2020-01-01"]["patient_id"] == "ddd" and rows["psma_ddd_2020-01-01"]["tracer"] == "psma"
    row = rows["psma_ddd_2020-01-01"]
    original = np.asanyarray(nib.load(folder / "imagesTr" / "psma_ddd_2020-01-01_0001.nii.gz").dataobj)
    assert np.array_equal(np.asanyarray(row["pet"].dataobj), original)
    assert np.asanyarray(row["label"].dataobj).sum() == 8
    assert row["spacing"] == [2.0, 2.0, 3.0] and row["shape"] == [16, 16, 16]


def test_the_task_is_found_by_name_alias_and_layout_before_msd(tmp_path):
    folder = write_autopet3(tmp_path / "raw")
    assert get_task("autoPET-III").name == "autopet3" and get_task("autopet4").name == "autopet3"
    # the folder has dataset.json and imagesTr/ like MSD's, but is autoPET III
    assert detect_task(folder) == (get_task("autopet3"), folder)
    assert detect_task(tmp_path / "raw") == (get_task("autopet3"), folder)
    assert get_task("brain_tumour").find_root(folder) == folder  # why autopet3 is asked first


# ------------------------------------------------------------------------------------------------ folds


def test_without_splits_file_folds_are_patient_grouped_and_hold_both_tracers(tmp_path):
    write_autopet3(tmp_path / "raw")
    validated = []
    for fold in range(2):
        data = _load(tmp_path / "raw", tmp_path, fold=fold)
        patients = {split: {row["patient_id"] for row in data[split]} for split in data}
        assert not patients["train"] & patients["validation"]  # both studies of patient aaa on one side
        assert {row["tracer"] for row in data["validation"]} == {"fdg", "psma"}
        validated += data["validation"]["case_id"]
    assert sorted(validated) == sorted(CASES)


def test_fallback_folds_are_stratified_by_tracer():
    patients = [f"p{i:02d}" for i in range(20)]
    tracers = ["fdg"] * 10 + ["psma"] * 10
    folds = assign_folds(patients, tracers, 5, order=("fdg", "psma"))
    for tracer in ("fdg", "psma"):
        assert Counter(f for f, t in zip(folds, tracers, strict=True) if t == tracer) == dict.fromkeys(range(5), 2)


def test_splits_final_is_used_exactly(tmp_path):
    splits = [
        {"train": list(CASES[2:]), "val": list(CASES[:2])},
        # not what the patient-grouped rule would make: it must be used as written, in its order
        {
            "train": ["psma_fff_2019-09-09", "fdg_aaa_01-02-2020", "fdg_aaa_07-02-2020", "fdg_ccc_04-04-2019"],
            "val": ["psma_eee_2021-05-05", "fdg_bbb_03-03-2021", "psma_ddd_2020-01-01"],
        },
        {"train": list(CASES[:5]), "val": list(CASES[5:])},
    ]
    write_autopet3(tmp_path / "raw", splits=splits)
    data = _load(tmp_path / "raw", tmp_path, fold=1, num_folds=3)
    assert list(data["train"]["case_id"]) == splits[1]["train"]
    assert list(data["validation"]["case_id"]) == splits[1]["val"]


def test_splits_final_with_another_number_of_folds_is_a_clear_error(tmp_path):
    write_autopet3(tmp_path / "raw", splits=[{"train": list(CASES[1:]), "val": [CASES[0]]}] * 3)
    with pytest.raises(
        UserInputError, match=r"splits_final.json'?: defines 3 folds but num_folds is 5; pass num_folds=3"
    ):
        _load(tmp_path / "raw", tmp_path, num_folds=5)


# ------------------------------------------------------------------------------------------------ bad inputs


def _drop(channel):
    return lambda folder: (folder / "imagesTr" / f"{BAD}_{channel}.nii.gz").unlink()


def _other_grid(folder):
    ct = folder / "imagesTr" / f"{BAD}_0000.nii.gz"
    _save(np.asanyarray(nib.load(ct).dataobj), ct, affine=np.diag([2.0, 2.0, 2.5, 1.0]))


def _label_value_2(folder):
    label = _lesion()
    label[0, 0, 0] = 2
    _save(label, folder / "labelsTr" / f"{BAD}.nii.gz")


def _duplicate(folder):
    image = nib.load(folder / "imagesTr" / f"{BAD}_0000.nii.gz")
    nib.save(image, str(folder / "imagesTr" / f"{BAD}_0000.nii"))


def _no_prefix(folder):
    for path in [*folder.glob(f"*/{BAD}*")]:
        path.rename(path.with_name(path.name.replace(BAD, "eee_2021-05-05")))


def _splits(folder, folds):
    (folder / "splits_final.json").write_text(json.dumps(folds))


def _unknown_case(folder):
    _splits(
        folder,
        [
            {"train": [*CASES[:4], "fdg_zzz_01-01-2000"], "val": list(CASES[4:])},
            {"train": list(CASES[4:]), "val": list(CASES[:4])},
        ],
    )


def _both_sides(folder):
    _splits(
        folder, [{"train": list(CASES[:4]), "val": list(CASES[4:])}, {"train": [*CASES[4:]], "val": [*CASES[:4], BAD]}]
    )


BAD_INPUTS = {
    "pet missing": (_drop("0001"), BAD, [f"imagesTr/{BAD}_0001.nii.gz", "file not found"]),
    "ct missing": (_drop("0000"), BAD, [f"imagesTr/{BAD}_0000.nii.gz", "file not found"]),
    "channels on different grids": (_other_grid, BAD, [f"imagesTr/{BAD}_0000.nii.gz", "disagrees with", "PET grid"]),
    "label value 2": (_label_value_2, BAD, [f"labelsTr/{BAD}.nii.gz", "label values span 0..2; expected 0..1"]),
    "duplicate case id": (_duplicate, BAD, [f"{BAD}_0000.nii and imagesTr/{BAD}_0000.nii.gz", "duplicate case id"]),
    "no tracer prefix": (_no_prefix, "eee_2021-05-05", ["imagesTr/eee_2021-05-05_0001.nii.gz", "no tracer prefix"]),
    "splits name an unknown case": (_unknown_case, "fdg_zzz_01-01-2000", ["splits_final.json", "not in imagesTr/"]),
    "splits put a case on both sides": (_both_sides, BAD, ["splits_final.json", "in both train and val"]),
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_input_is_one_clear_error_naming_the_case_and_file(tmp_path, kind):
    breaker, case, fragments = BAD_INPUTS[kind]
    breaker(write_autopet3(tmp_path / "raw"))
    with pytest.raises(UserInputError) as caught:
        _load(tmp_path / "raw", tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in (case, *fragments):
        assert fragment in message, message
    assert not list((tmp_path / "cache").rglob("*.arrow")), "a failed build leaves no dataset behind"


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_skip_bad_lists_and_skips_the_bad_case(tmp_path, kind):
    breaker, case, fragments = BAD_INPUTS[kind]
    breaker(write_autopet3(tmp_path / "raw"))
    with pytest.warns(UserWarning) as caught:
        data = _load(tmp_path / "raw", tmp_path, skip_bad=True)
    listed = "\n".join(str(w.message) for w in caught)
    assert case in listed and fragments[0] in listed, listed
    loaded = [row["case_id"] for row in _rows(data)]
    assert case not in loaded and len(loaded) == len(CASES) - (kind not in ("splits name an unknown case",))


def test_dataset_json_with_other_channels_is_refused(tmp_path):
    folder = write_autopet3(tmp_path / "raw")
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "PET", "1": "CT"}}))
    with pytest.raises(UserInputError, match="dataset.json'?: channel_names .* expected \\{'0': 'CT', '1': 'PET'\\}"):
        _load(tmp_path / "raw", tmp_path)


# ------------------------------------------------------------------------------------------------ predict, evaluate


def test_predict_input_dir_reads_the_channel_files_and_evaluate_scores_them(tmp_path, model_dir):
    folder = write_autopet3(tmp_path / "raw", cases=CASES[3:5])
    from mirror_unet_hf.commands.predict import dataset_studies

    studies = dataset_studies(folder)
    case = "psma_ddd_2020-01-01"
    assert studies[case] == {
        "ct": folder / "imagesTr" / f"{case}_0000.nii.gz",
        "pet": folder / "imagesTr" / f"{case}_0001.nii.gz",
    }
    assert study_inputs(studies[case], ["pet"]) == {"pet": folder / "imagesTr" / f"{case}_0001.nii.gz"}
    with pytest.raises(UserInputError, match="none for modality 't1gd'"):
        study_inputs(studies[case], ["t1gd"])
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(model_dir), "--input-dir", str(folder), "--out-dir", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{c}.nii.gz" for c in CASES[3:5]]
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(out),
                "--gt",
                str(folder),
                "--task",
                "autopet3",
                "--out",
                str(tmp_path / "m.csv"),
            ]
        )
        == 0
    )
    with open(tmp_path / "m.csv", newline="") as stream:
        assert [row["case_id"] for row in csv.DictReader(stream)] == [*CASES[3:5], "mean", "mean fdg", "mean psma"]


def _predictions(folder: Path) -> Path:
    """fdg_aaa: perfect (Dice 1); fdg_bbb: half the lesion (2*4/(4+8) = 2/3); psma_ddd: nothing (0); psma_eee:
    the lesion and one stray voxel (2*8/(9+8) = 16/17, FPV one voxel)."""
    pred = folder / "pred"
    pred.mkdir()
    half, stray = _lesion(), _lesion()
    half[4, :, :] = 0
    stray[12, 12, 12] = 1
    masks = {
        "fdg_aaa_01-02-2020": _lesion(),
        "fdg_bbb_03-03-2021": half,
        "psma_ddd_2020-01-01": np.zeros((16, 16, 16), np.uint8),
        "psma_eee_2021-05-05": stray,
    }
    for case, mask in masks.items():
        _save(mask, pred / f"{case}.nii.gz")
    return pred


EVALUATED = ("fdg_aaa_01-02-2020", "fdg_bbb_03-03-2021", "psma_ddd_2020-01-01", "psma_eee_2021-05-05")


def test_evaluate_reports_fdg_psma_and_all_means_by_hand(tmp_path):
    folder = write_autopet3(tmp_path / "raw", cases=EVALUATED)
    pred = _predictions(tmp_path)
    report = evaluate_folders(pred, folder, "autopet3")
    dice = {row["case_id"]: row["dice"] for row in report.rows}
    assert dice == pytest.approx({EVALUATED[0]: 1.0, EVALUATED[1]: 2 / 3, EVALUATED[2]: 0.0, EVALUATED[3]: 16 / 17})
    means = {row["case_id"]: row for row in report.table()[len(EVALUATED) :]}
    assert list(means) == ["mean", "mean fdg", "mean psma"]
    assert means["mean"]["dice"] == pytest.approx((1 + 2 / 3 + 0 + 16 / 17) / 4)
    assert means["mean fdg"]["dice"] == pytest.approx((1 + 2 / 3) / 2)
    assert means["mean psma"]["dice"] == pytest.approx(8 / 17)
    assert means["mean fdg"]["fpv_ml"] == 0.0
    assert means["mean psma"]["fpv_ml"] == pytest.approx(VOXEL_ML / 2)  # one stray voxel over two studies
    assert means["mean psma"]["fnv_ml"] == pytest.approx(8 * VOXEL_ML / 2)  # psma_ddd's missed lesion
    assert means["mean fdg"]["status"] == "mean of 2 scored"

    out, out_json = tmp_path / "m.csv", tmp_path / "m.json"
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(pred),
                "--gt",
                str(folder),
                "--task",
                "autopet3",
                "--out",
                str(out),
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    with open(out, newline="") as stream:
        rows = {row["case_id"]: row for row in csv.DictReader(stream)}
    assert float(rows["mean psma"]["dice"]) == pytest.approx(8 / 17)
    payload = json.loads(out_json.read_text())
    assert [row["case_id"] for row in payload["group_means"]] == ["mean fdg", "mean psma"]
    assert payload["group_means"][0]["dice"] == pytest.approx(5 / 6)


def test_evaluate_task_autopet_groups_tracer_prefixed_case_ids_of_a_flat_folder(tmp_path, capsys):
    folder = write_autopet3(tmp_path / "raw", cases=EVALUATED)
    flat = tmp_path / "flat"
    shutil.copytree(folder / "labelsTr", flat)
    pred = _predictions(tmp_path)
    assert (
        main(
            ["evaluate", "--pred", str(pred), "--gt", str(flat), "--task", "autopet", "--out", str(tmp_path / "m.csv")]
        )
        == 0
    )
    summary = capsys.readouterr().out
    assert "mean fdg" in summary and "mean psma" in summary
    dice_line = next(line for line in summary.splitlines() if line.startswith("dice "))
    assert dice_line.split()[1:] == ["0.6520", "0.8333", "0.4706"]  # all, fdg, psma


def test_case_groups_are_the_tracer_prefix_or_none():
    autopet = get_task("autopet")
    assert autopet.case_group("psma_95b833d46f153cd2_2018-04-16") == "psma"
    assert autopet.case_group("fdg_3c6e4f2a1b_05-02-2002") == "fdg"
    assert autopet.case_group("PETCT_0011f3deaf_03-23-2003-NA-PET-CT") is None
    assert get_task("brain_tumour").case_group("BRATS_001") is None


# ------------------------------------------------------------------------------------------------ phantoms


def test_make_phantoms_writes_both_tracers_and_patient_grouped_official_splits(tmp_path):
    assert (
        main(
            [
                "make-phantoms",
                "--layout",
                "autopet3",
                "--out",
                str(tmp_path),
                "--n",
                "6",
                "--seed",
                "1",
                "--shape",
                "24",
                "24",
                "24",
            ]
        )
        == 0
    )
    folder = tmp_path / FOLDER
    cases = sorted(p.name.removesuffix(".nii.gz") for p in (folder / "labelsTr").iterdir())
    assert len(cases) == 6 and {case.split("_")[0] for case in cases} == {"fdg", "psma"}
    images = sorted(p.name for p in (folder / "imagesTr").iterdir())
    assert images == sorted(f"{case}_{channel}.nii.gz" for case in cases for channel in ("0000", "0001"))
    assert json.loads((folder / "dataset.json").read_text())["channel_names"] == {"0": "CT", "1": "PET"}
    splits = json.loads((folder / "splits_final.json").read_text())
    assert len(splits) == 5
    assert sorted(case for fold in splits for case in fold["val"]) == cases
    for fold in splits:
        assert sorted(fold["train"] + fold["val"]) == cases
        patients = [{case.split("_")[1] for case in fold[side]} for side in ("train", "val")]
        assert not patients[0] & patients[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some of the five folds of six studies have one patient
        data = load_mirror_dataset("autopet3", tmp_path, fold=2, cache_dir=tmp_path / "cache")
    assert sorted(data["validation"]["case_id"]) == sorted(splits[2]["val"])


def test_psma_phantoms_show_psma_uptake_and_prostate_cancer_lesions():
    from mirror_unet_hf.data.phantoms.autopet import AUTOPET_SPACING, body_parts, draw_anatomy, fdg_uptake, render_study
    from mirror_unet_hf.data.phantoms.common import Space
    from mirror_unet_hf.data.phantoms.psma import draw_psma_anatomy, draw_psma_lesions, psma_regions, psma_uptake

    shape = (64, 64, 56)
    fdg_anatomy = draw_anatomy(np.random.default_rng(5), shape)
    psma_anatomy = draw_psma_anatomy(np.random.default_rng(5), shape)  # the same body, PSMA uptake
    _, fdg, _, _ = render_study(np.random.default_rng(6), fdg_anatomy, [], fdg_uptake)
    _, psma, _, _ = render_study(np.random.default_rng(6), psma_anatomy, [], psma_uptake, psma_regions)
    space = Space(shape, AUTOPET_SPACING)  # the study shift is a few mm: organ cores stay inside
    parts = body_parts(space, psma_anatomy)
    glands = dict(psma_regions(space, parts, psma_anatomy))
    core = {
        "brain": parts["head_d"] <= 0.4,
        "kidney": parts["kidney_d"] <= 0.5,
        "salivary": glands["parotid"] | glands["submandibular"],
        "liver": parts["liver"] & (parts["rho"] < 0.7),
    }
    mean = {name: (float(fdg[mask].mean()), float(psma[mask].mean())) for name, mask in core.items()}
    assert mean["brain"][0] > 4.0 > 1.0 > mean["brain"][1], mean  # FDG lights up the brain, PSMA does not
    assert mean["salivary"][1] > 10 * mean["brain"][1] and mean["salivary"][0] < mean["brain"][0], mean
    assert mean["kidney"][1] > 2 * mean["kidney"][0], mean
    assert mean["liver"][1] > mean["liver"][0], mean
    kinds = Counter(
        lesion["kind"] for seed in range(20) for lesion in draw_psma_lesions(np.random.default_rng(seed), psma_anatomy)
    )
    assert set(kinds) == {"prostate", "node", "bone"}, kinds
