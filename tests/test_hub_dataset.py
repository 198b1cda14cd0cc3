"""Publishing data folders as Hub dataset repos: one commit, a dataset card, and loading back with
`huggingface_hub` and `datasets` against the loopback Hub."""

import json
import re

import nibabel as nib
import numpy as np
import pytest
from conftest_hub import folder_digest, run_python
from hub_server import hub_fixture, validate_card_metadata  # noqa: F401  (the `hub` fixture)
from huggingface_hub import DatasetCard

from mirror_unet_hf.errors import UserInputError
from mirror_unet_hf.hub import push_dataset

REPO = "tester/autopet-phantoms"


def write_autopet_tree(root, patients=("PHANTOM_000", "PHANTOM_001"), size=8):
    """A tiny AutoPET-layout tree: <patient>/<study>/{CTres,SUV,SEG}.nii.gz on a 2 x 2 x 3 mm grid."""
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    for patient in patients:
        study = root / "FDG-PET-CT-Lesions" / patient / "01-01-2000-NA-phantom"
        study.mkdir(parents=True)
        volumes = {
            "CTres.nii.gz": rng.normal(0, 100, (size,) * 3).astype(np.float32),
            "SUV.nii.gz": rng.random((size,) * 3).astype(np.float32) * 10,
            "SEG.nii.gz": (rng.random((size,) * 3) > 0.9).astype(np.uint8),
        }
        for name, array in volumes.items():
            nib.save(nib.Nifti1Image(array, affine), study / name)
    return root


@pytest.fixture
def phantoms(tmp_path):
    return write_autopet_tree(tmp_path / "autopet-phantoms")


def test_folder_becomes_a_dataset_repo_in_one_commit_without_touching_the_folder(hub, phantoms):
    before = folder_digest(phantoms)
    url = push_dataset(phantoms, REPO, license="cc-by-4.0", token=hub.token, endpoint=hub.url)
    assert url == f"{hub.url}/datasets/{REPO}"
    assert [c.title for c in hub.history(REPO, repo_type="dataset")] == ["Upload 6 data files", "initial commit"]
    files = hub.files(REPO, repo_type="dataset")
    assert set(files) == set(before) | {".gitattributes", "README.md", "metadata.jsonl"}
    for name in before:
        assert files[name] == (phantoms / name).read_bytes()
    assert folder_digest(phantoms) == before


def test_autopet_tree_gets_one_metadata_row_per_study(hub, phantoms):
    push_dataset(phantoms, REPO, token=hub.token, endpoint=hub.url)
    rows = [json.loads(line) for line in hub.files(REPO, repo_type="dataset")["metadata.jsonl"].decode().splitlines()]
    study = "FDG-PET-CT-Lesions/PHANTOM_000/01-01-2000-NA-phantom"
    assert rows[0] == {
        "case_id": "PHANTOM_000_01-01-2000-NA-phantom",
        "ct_file_name": f"{study}/CTres.nii.gz",
        "pet_file_name": f"{study}/SUV.nii.gz",
        "seg_file_name": f"{study}/SEG.nii.gz",
    }
    assert len(rows) == 2


def test_dataset_card_has_metadata_layout_licence_and_phantom_notice(hub, phantoms):
    push_dataset(phantoms, REPO, license="cc-by-4.0", token=hub.token, endpoint=hub.url)
    text = hub.files(REPO, repo_type="dataset")["README.md"].decode()
    assert validate_card_metadata(text) == []
    card = DatasetCard(text)
    assert card.data.license == "cc-by-4.0"
    assert {"medical-imaging", "nifti", "pet-ct", "synthetic-data"} <= set(card.data.tags)
    assert card.data.task_categories == ["image-segmentation"]
    assert "AutoPET layout: 2 studies" in card.text and "6 files" in card.text
    assert "FDG-PET-CT-Lesions/PHANTOM_001/01-01-2000-NA-phantom/SUV.nii.gz" in card.text
    assert "**Synthetic phantoms, not patient data.**" in card.text


def test_how_to_load_code_runs_with_datasets_and_huggingface_hub(hub, phantoms, tmp_path):
    push_dataset(phantoms, REPO, token=hub.token, endpoint=hub.url)
    text = hub.files(REPO, repo_type="dataset")["README.md"].decode()
    section = text[text.index("## How to load") :]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 2 and "load_dataset" in blocks[0] and "snapshot_download" in blocks[1]
    result = run_python("".join(f"exec({b!r}, {{}})\n" for b in blocks), hub.env(tmp_path / "hf_home"), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("2 PHANTOM_000_01-01-2000-NA-phantom (8, 8, 8) 1.0")  # datasets: one row per study
    assert lines[1].startswith("6 (8, 8, 8) (2.0, 2.0, 3.0)")  # the raw files


def test_msd_folder_pairs_images_and_labels(hub, tmp_path):
    root = tmp_path / "msd"
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"name": "BRATS"}))
    for case in ("BRATS_001", "BRATS_002"):
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 4), np.float32), np.eye(4)), root / "imagesTr" / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), root / "labelsTr" / f"{case}.nii.gz")
    push_dataset(root, "tester/msd-sample", token=hub.token, endpoint=hub.url)
    files = hub.files("tester/msd-sample", repo_type="dataset")
    rows = [json.loads(line) for line in files["metadata.jsonl"].decode().splitlines()]
    assert rows[1] == {
        "case_id": "BRATS_002",
        "image_file_name": "imagesTr/BRATS_002.nii.gz",
        "label_file_name": "labelsTr/BRATS_002.nii.gz",
    }
    card = DatasetCard(files["README.md"].decode())
    assert "mri" in card.data.tags and "synthetic-data" not in card.data.tags
    assert "Medical Segmentation Decathlon layout" in card.text


def test_folder_with_its_own_readme_is_refused(hub, phantoms):
    (phantoms / "README.md").write_text("# my notes\n")
    with pytest.raises(UserInputError, match="README.md exists; remove it"):
        push_dataset(phantoms, REPO, token=hub.token, endpoint=hub.url)
    assert hub.requests == []


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError, match="is not a folder"):
        push_dataset(tmp_path / "nowhere", REPO, token="unused", endpoint="http://127.0.0.1:9")


def test_an_in_memory_dataset_is_pointed_to_its_own_push_to_hub():
    from datasets import Dataset

    with pytest.raises(UserInputError, match="got a Dataset; expected a folder path .*Dataset.push_to_hub"):
        push_dataset(Dataset.from_dict({"x": [1]}), REPO, token="unused", endpoint="http://127.0.0.1:9")
