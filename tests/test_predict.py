"""`mirror-unet predict` and `predict_study`: phantoms and real PET/CT, outputs on the reference grid, bad inputs."""

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mirror_unet_hf import MirrorUNetConfig, MirrorUNetModel
from mirror_unet_hf.cli import main
from mirror_unet_hf.data.phantoms import make_phantoms
from mirror_unet_hf.inference import load_model, predict_study, study_inputs
from mirror_unet_hf.lesions import lesion_table

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model") / "small-v3"
    config = MirrorUNetConfig.from_preset("autopet-v3", channels=[4, 8, 16, 32, 64], patch_size=[48, 48, 48])
    MirrorUNetModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return make_phantoms("autopet", tmp_path_factory.mktemp("phantoms"), 2, seed=3, shape=(48, 40, 32))


def first_study(root: Path) -> Path:
    return sorted(root.rglob("SUV.nii.gz"))[0].parent


def test_predict_round_trip_on_a_phantom_writes_uint8_on_the_pet_grid(tmp_path, checkpoint, phantoms, capsys):
    study = first_study(phantoms)
    out = tmp_path / "seg.nii.gz"
    assert main(["predict", "--model", str(checkpoint), "--study", str(study), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    mask, pet = nib.load(out), nib.load(study / "SUV.nii.gz")
    assert mask.shape == pet.shape
    np.testing.assert_allclose(mask.affine, pet.affine)
    assert mask.get_data_dtype() == np.uint8
    assert set(np.unique(np.asanyarray(mask.dataobj))) <= {0, 1}
    assert 0.0 <= summary["classification"]["lesion_presence"] <= 1.0


def test_lesion_table_matches_the_written_mask(tmp_path, checkpoint, phantoms, capsys):
    study = first_study(phantoms)
    out, csv_path = tmp_path / "seg.nii.gz", tmp_path / "lesions.csv"
    args = [
        "predict",
        "--model",
        str(checkpoint),
        "--input",
        f"ct={study / 'CTres.nii.gz'}",
        "--input",
        f"pet={study / 'SUV.nii.gz'}",
        "--out",
        str(out),
        "--lesions",
        str(csv_path),
    ]
    assert main(args) == 0
    mask = nib.load(out)
    expected = lesion_table(np.asanyarray(mask.dataobj), nib.load(study / "SUV.nii.gz").get_fdata(), mask.affine)
    summary = json.loads((tmp_path / "lesions.json").read_text())["summary"]
    assert summary["lesion_count"] == expected.lesion_count
    assert summary["total_mtv_ml"] == pytest.approx(expected.total_mtv_ml)
    assert len(csv_path.read_text().strip().splitlines()) == expected.lesion_count + 1


def test_save_branches_writes_reconstructions_in_modality_units(tmp_path, checkpoint, phantoms):
    study = first_study(phantoms)
    branches = tmp_path / "branches"
    args = [
        "predict",
        "--model",
        str(checkpoint),
        "--study",
        str(study),
        "--out",
        str(tmp_path / "s.nii.gz"),
        "--save-branches",
        str(branches),
    ]
    assert main(args) == 0
    names = sorted(p.name for p in branches.iterdir())
    assert names == ["s_bottleneck_decoder.nii.gz", "s_ct.nii.gz", "s_pet.nii.gz"]
    ct = nib.load(branches / "s_ct.nii.gz")
    assert ct.shape == nib.load(study / "SUV.nii.gz").shape
    # the CT branch reconstructs the windowed CT: values come back in HU around the -100..250 window
    assert -400 < float(np.median(ct.get_fdata())) < 500


def test_input_dir_writes_one_mask_per_case_that_evaluate_reads(tmp_path, checkpoint, phantoms, capsys):
    out_dir = tmp_path / "pred"
    assert (
        main(["predict", "--model", str(checkpoint), "--input-dir", str(phantoms.parent), "--out-dir", str(out_dir)])
        == 0
    )
    written = sorted(p.name for p in out_dir.iterdir())
    assert len(written) == 2
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(out_dir),
                "--gt",
                str(phantoms.parent),
                "--task",
                "autopet",
                "--out",
                str(tmp_path / "metrics.csv"),
            ]
        )
        == 0
    )


def test_bf16_prediction_agrees_with_fp32(checkpoint, phantoms):
    from mirror_unet_hf.sliding_window import SlidingWindowSettings

    model = load_model(checkpoint)
    inputs = study_inputs(first_study(phantoms), ["ct", "pet"])
    fp32 = np.asanyarray(predict_study(model, inputs).mask.dataobj)
    bf16 = np.asanyarray(predict_study(model, inputs, SlidingWindowSettings(precision="bf16")).mask.dataobj)
    assert (fp32 == bf16).mean() > 0.99


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared sample data absent: {SHARED}")
def test_real_native_grid_ct_is_resampled_and_the_mask_lies_on_the_pet_grid(tmp_path, checkpoint):
    native = SHARED / "petct_native" / "STS_002"
    out = tmp_path / "seg.nii.gz"
    args = [
        "predict",
        "--model",
        str(checkpoint),
        "--input",
        f"ct={native / 'CT.nii.gz'}",
        "--input",
        f"pet={native / 'SUV.nii.gz'}",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    mask, pet, ct = nib.load(out), nib.load(native / "SUV.nii.gz"), nib.load(native / "CT.nii.gz")
    assert ct.shape != pet.shape
    assert mask.shape == pet.shape
    np.testing.assert_allclose(mask.affine, pet.affine)


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared sample data absent: {SHARED}")
def test_real_autopet_layout_study_predicts_on_its_grid(tmp_path, checkpoint):
    study = first_study(SHARED / "autopet_layout")
    out = tmp_path / "seg.nii.gz"
    assert main(["predict", "--model", str(checkpoint), "--study", str(study), "--out", str(out)]) == 0
    assert nib.load(out).shape == nib.load(study / "SUV.nii.gz").shape


# ------------------------------------------------------------------------------------ bad input


@pytest.fixture()
def files(tmp_path, phantoms):
    study = first_study(phantoms)
    ct, pet = nib.load(study / "CTres.nii.gz"), nib.load(study / "SUV.nii.gz")
    made = {"ct": study / "CTres.nii.gz", "pet": study / "SUV.nii.gz"}
    made["text"] = tmp_path / "notes.nii.gz"
    made["text"].write_text("not an image")
    raw = (study / "SUV.nii.gz").read_bytes()
    made["truncated"] = tmp_path / "truncated.nii.gz"
    made["truncated"].write_bytes(raw[: len(raw) // 2])
    shifted = pet.affine.copy()
    shifted[:3, 3] += 5000.0
    made["far"] = tmp_path / "far.nii.gz"
    nib.save(nib.Nifti1Image(ct.get_fdata().astype(np.float32), shifted), made["far"])
    nan = pet.get_fdata().astype(np.float32)
    nan[3, 3, 3] = np.nan
    made["nan"] = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(nan, pet.affine), made["nan"])
    made["flat"] = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(pet.get_fdata()[:, :, 0].astype(np.float32), pet.affine), made["flat"])
    return made


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"ct": "text", "pet": "pet"}, "not a readable NIfTI file"),
        ({"ct": "ct", "pet": "truncated"}, "file truncated"),
        ({"pet": "pet"}, "modality 'ct' is missing"),
        ({"ct": "ct", "pet": "pet", "mri": "pet"}, "unknown modality 'mri'; accepted: ct, pet"),
        ({"ct": "far", "pet": "pet"}, "does not overlap"),
        ({"ct": "ct", "pet": "nan"}, "NaN"),
        ({"ct": "ct", "pet": "flat"}, "3D"),
    ],
)
def test_bad_inputs_give_one_line_exit_2_and_no_output(tmp_path, checkpoint, files, capsys, inputs, message):
    out = tmp_path / "seg.nii.gz"
    args = ["predict", "--model", str(checkpoint), "--out", str(out)]
    for name, key in inputs.items():
        args += ["--input", f"{name}={files[key]}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".seg")], "no temporary file left behind"


def test_output_in_a_missing_folder_is_refused(tmp_path, checkpoint, files, capsys):
    out = tmp_path / "nowhere" / "seg.nii.gz"
    assert (
        main(
            [
                "predict",
                "--model",
                str(checkpoint),
                "--input",
                f"ct={files['ct']}",
                "--input",
                f"pet={files['pet']}",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_existing_output_is_not_overwritten_without_the_flag(tmp_path, checkpoint, files, capsys):
    out = tmp_path / "seg.nii.gz"
    out.write_bytes(b"keep me")
    args = [
        "predict",
        "--model",
        str(checkpoint),
        "--input",
        f"ct={files['ct']}",
        "--input",
        f"pet={files['pet']}",
        "--out",
        str(out),
    ]
    assert main(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main(args + ["--overwrite"]) == 0
    assert gzip.decompress(out.read_bytes())[:4] != b"keep"


def test_pickle_weights_are_refused(tmp_path, checkpoint, capsys):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((checkpoint / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04")
    assert main(["predict", "--model", str(folder), "--study", str(tmp_path), "--out", str(tmp_path / "o.nii.gz")]) == 2
    assert "pickle-based weights are refused" in capsys.readouterr().err
