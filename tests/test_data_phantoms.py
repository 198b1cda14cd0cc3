"""Phantoms: real layouts, determinism, plausible intensities, and the make-phantoms command."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from mirror_unet_hf.cli import main
from mirror_unet_hf.data import make_phantoms
from mirror_unet_hf.data.constants import AUTOPET_METADATA_CSV
from mirror_unet_hf.errors import UserInputError

SMALL = (40, 40, 32)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _data(path):
    return np.asanyarray(nib.load(str(path)).dataobj)


def test_same_seed_writes_identical_files_and_other_seeds_differ(tmp_path):
    first = _files(make_phantoms("autopet", tmp_path / "a", n=3, seed=1, shape=SMALL).parent)
    again = _files(make_phantoms("autopet", tmp_path / "b", n=3, seed=1, shape=SMALL).parent)
    other = _files(make_phantoms("autopet", tmp_path / "c", n=3, seed=2, shape=SMALL).parent)
    assert first == again
    assert set(first) != set(other)  # new patient ids and study names


def test_fewer_studies_are_a_prefix_of_more(tmp_path):
    two = _files(make_phantoms("autopet", tmp_path / "a", n=1, seed=3, shape=SMALL))
    four = _files(make_phantoms("autopet", tmp_path / "b", n=4, seed=3, shape=SMALL))
    assert all(four[name] == content for name, content in two.items())


# Digests of the uncompressed files of two FDG phantom sets, computed before the renderer was split into
# tracer-independent pieces (autoPET III/IV PSMA phantoms): AutoPET phantoms must stay byte-identical.
FDG_PHANTOM_DIGESTS = {
    (
        8,
        3,
        (32, 32, 24),
    ): "a89f7f6ed393c33aae9ac8bc94f18f6b1602c3ee823dc4f40828d8df9ecdfc58",  # every diagnosis, a follow-up
    (2, 0, None): "e7b462037e412475901fb8188986afe8ea997bf077ae34b823ef8ce21ea3a1e1",  # default 96 x 96 x 80
}


def _digest(out_dir) -> str:
    """SHA-256 over every file's relative path and uncompressed bytes (independent of the zlib build)."""
    digest = hashlib.sha256()
    for path in sorted(out_dir.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            data = gzip.decompress(data) if path.name.endswith(".gz") else data
            digest.update(str(path.relative_to(out_dir)).encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


@pytest.mark.parametrize(("n", "seed", "shape"), list(FDG_PHANTOM_DIGESTS))
def test_autopet_fdg_phantoms_are_byte_identical_to_before_the_psma_phantoms(tmp_path, n, seed, shape):
    make_phantoms("autopet", tmp_path, n, seed, shape=shape)
    assert _digest(tmp_path) == FDG_PHANTOM_DIGESTS[(n, seed, shape)]


def test_autopet_layout_metadata_and_patient_structure(tmp_path):
    root = make_phantoms("autopet", tmp_path, n=12, seed=0, shape=SMALL)
    studies = sorted(p for p in root.glob("*/*") if p.is_dir())
    assert len(studies) == 12
    for study in studies:
        assert sorted(f.name for f in study.iterdir()) == ["CTres.nii.gz", "SEG.nii.gz", "SUV.nii.gz"]
        assert study.parent.name.startswith("PETCT_")
    patients = {s.parent.name for s in studies}
    assert len(patients) < len(studies), "some patients must have two studies"
    with open(tmp_path / AUTOPET_METADATA_CSV, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert {r["Modality"] for r in rows} == {"CT", "PT", "SEG"}
    per_study = {(r["Subject ID"], r["Study Date"]): r["diagnosis"] for r in rows}
    assert len(per_study) == 12
    assert set(per_study.values()) <= {"NEGATIVE", "LYMPHOMA", "MELANOMA", "LUNG_CANCER"}
    negatives = sum(v == "NEGATIVE" for v in per_study.values())
    assert 4 <= negatives <= 8, "about half the studies are negative"
    for study in studies:
        seg = _data(study / "SEG.nii.gz")
        month, day, year = study.name[:10].split("-")
        diagnosis = per_study[(study.parent.name, f"{int(month)}/{int(day)}/{year}")]
        assert (diagnosis == "NEGATIVE") == (seg.max() == 0)


def test_autopet_phantom_has_plausible_ct_and_pet(autopet_phantoms):
    root = autopet_phantoms / "FDG-PET-CT-Lesions"
    positives = 0
    for study in sorted(p for p in root.glob("*/*") if p.is_dir()):
        ct_image = nib.load(str(study / "CTres.nii.gz"))
        ct, suv, seg = _data(study / "CTres.nii.gz"), _data(study / "SUV.nii.gz"), _data(study / "SEG.nii.gz")
        assert ct_image.header.get_zooms() == (2.0, 2.0, 3.0)
        assert nib.aff2axcodes(ct_image.affine) == ("L", "A", "S")
        assert ct.dtype == np.float32 and suv.dtype == np.float32 and seg.dtype == np.uint8
        assert abs(float(ct[0, 0, 0]) + 1000) < 60, "air outside the body"
        body = ct > -500
        assert 0.15 < body.mean() < 0.7
        assert ((ct < -700) & (np.arange(ct.shape[2]) > ct.shape[2] * 0.45)).sum() > 50, "lungs in the thorax"
        assert (ct > 500).sum() > 20, "bone"
        assert 0.3 < float(np.median(suv[body])) < 2.0, "background SUV"
        assert float(suv.max()) > 5.0, "brain, heart or bladder uptake"
        if seg.any():
            positives += 1
            assert float(suv[seg > 0].mean()) > 1.5 * float(np.median(suv[body]))
    assert positives >= 2


def test_brain_phantom_shows_the_mri_contrasts(brain_phantoms):
    root = brain_phantoms / "Task01_BrainTumour"
    manifest = json.loads((root / "dataset.json").read_text())
    assert manifest["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert len(manifest["training"]) == 3
    for entry in manifest["training"]:
        image = nib.load(str(root / entry["image"]))
        data, label = np.asanyarray(image.dataobj), _data(root / entry["label"])
        assert data.shape == (32, 40, 32, 4) and data.dtype == np.float32
        assert set(np.unique(label)) <= {0, 1, 2, 3} and (label == 1).any() and (label == 2).any()
        head = (data[..., 0] > 0) & (label == 0)
        flair, t1gd, t2 = data[..., 0], data[..., 2], data[..., 3]
        core = ndimage.binary_erosion(label == 2)  # away from the blurred rim
        assert flair[label == 1].mean() > 1.3 * flair[head].mean(), "edema bright on FLAIR"
        assert t2[label == 1].mean() > t2[head].mean(), "edema bright on T2"
        if core.any():
            assert t1gd[core].mean() < t1gd[label == 1].mean(), "necrotic core dark on T1Gd"
            assert t2[core].mean() > t2[head].mean(), "necrotic core bright on T2"
        if (label == 3).any():
            assert t1gd[label == 3].mean() > 1.3 * t1gd[head].mean(), "enhancing rim bright on T1Gd"
        assert (data[0, 0, 0] == 0).all(), "background is exactly zero"


def test_cli_writes_phantoms_and_refuses_to_overwrite(tmp_path, capsys):
    args = [
        "make-phantoms",
        "--layout",
        "brain_tumour",
        "--out",
        str(tmp_path),
        "--n",
        "1",
        "--seed",
        "4",
        "--shape",
        "24",
        "24",
        "24",
    ]
    assert main(args) == 0
    assert (tmp_path / "Task01_BrainTumour" / "imagesTr" / "BRATS_001.nii.gz").is_file()
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging folder left behind"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layout": "ct"}, "unknown phantom layout"),
        ({"n": 0}, "n must be"),
        ({"seed": -1}, "seed must be"),
        ({"shape": (8, 8, 8)}, "shape must be"),
    ],
)
def test_bad_phantom_arguments_raise_user_errors(tmp_path, kwargs, message):
    arguments = {"layout": "autopet", "out_dir": tmp_path, "n": 1, "seed": 0, "shape": SMALL, **kwargs}
    with pytest.raises(UserInputError, match=message):
        make_phantoms(**arguments)
