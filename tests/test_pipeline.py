"""The `mirror-unet-segmentation` pipeline: the same mask, lesion table and classification as `mirror-unet predict`,
from a folder in process and from a Hub id (loopback Hub) in a fresh process without the package; older checkpoints."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import textwrap
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest_hub import WITHOUT_PACKAGE, run_python, small_config, train_briefly
from hub_server import LoopbackHub
from huggingface_hub import HfApi, constants
from transformers import pipeline

from mirror_unet_hf import MirrorUNetConfig, MirrorUNetModel
from mirror_unet_hf.cli import main
from mirror_unet_hf.data import preprocess_study
from mirror_unet_hf.hub import push_checkpoint
from mirror_unet_hf.hub.checkpoint_files import COMPANION_FILES
from mirror_unet_hf.image_processing_mirror_unet import ProcessorInputError
from mirror_unet_hf.inference import load_model, predict_study, study_inputs
from mirror_unet_hf.lesions import lesion_table
from mirror_unet_hf.pipeline_mirror_unet import PIPELINE_TASK
from mirror_unet_hf.pipeline_mirror_unet import lesion_table as pipeline_lesion_table
from mirror_unet_hf.sliding_window import SlidingWindowSettings

STS = "autopet_layout/FDG-PET-CT-Lesions/PETCT_sts002/01-01-2000-NA-study"
NEW, OLD, REPUSHED = "tester/mirror-unet-pipeline", "tester/mirror-unet-old", "tester/mirror-unet-old-repushed"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A briefly trained tiny `autopet-v3` (32³ windows), saved with save_pretrained."""
    folder = tmp_path_factory.mktemp("pipeline") / "v3"
    train_briefly(small_config("autopet-v3", patch_size=[32, 32, 32]), seed=0).save_pretrained(folder)
    return folder


def old_copy(folder: Path, target: Path) -> Path:
    """The checkpoint as saved before the processor and the pipeline existed: no companion files, and a
    config.json without `custom_pipelines` and the label maps."""
    target.mkdir(parents=True)
    for path in folder.iterdir():
        if path.name not in COMPANION_FILES:
            shutil.copy(path, target / path.name)
    config = json.loads((folder / "config.json").read_text())
    for key in ("custom_pipelines", "id2label", "label2id"):
        config.pop(key)
    (target / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return target


def table_dict(table) -> dict:
    return {"summary": table.summary(), "lesions": [lesion.as_row() for lesion in table.lesions]}


def lesion_study(root: Path) -> Path:
    """The first phantom study with a lesion."""
    return next(p.parent for p in sorted(root.rglob("SEG.nii.gz")) if np.asanyarray(nib.load(str(p)).dataobj).any())


# ------------------------------------------------------------------ the lesion table


def test_the_lesion_table_equals_the_packages_on_a_real_whole_body_mask(shared_data):
    seg = nib.load(str(shared_data / "autopet_lesion_mask" / "fdg_04606080a0_SEG.nii.gz"))
    mask = np.asanyarray(seg.dataobj)
    suv = np.random.default_rng(0).gamma(2.0, 2.0, mask.shape).astype(np.float32)
    expected = table_dict(lesion_table(mask, suv, seg.affine))
    assert expected["summary"]["lesion_count"] >= 2
    assert pipeline_lesion_table(mask, suv, seg.affine) == expected  # every number and the order


def test_the_lesion_table_equals_the_packages_on_a_real_sarcoma(shared_data):
    folder = shared_data / STS
    seg, suv = nib.load(str(folder / "SEG.nii.gz")), nib.load(str(folder / "SUV.nii.gz"))
    mask, values = np.asanyarray(seg.dataobj), np.asarray(suv.dataobj, dtype=np.float32)
    table = pipeline_lesion_table(mask, values, seg.affine)
    assert table == table_dict(lesion_table(mask, values, seg.affine))
    assert table["summary"]["suv_max"] == pytest.approx(21.7, abs=0.05)  # the README of the shared data
    assert pipeline_lesion_table(np.zeros_like(mask), values, seg.affine)["summary"]["lesion_count"] == 0


# ------------------------------------------------------------------ in process


def test_in_process_the_pipeline_gives_predict_studys_mask_lesions_and_classification(checkpoint, shared_data):
    folder = shared_data / STS
    segmenter = pipeline(PIPELINE_TASK, model=str(checkpoint), trust_remote_code=True)
    result = segmenter({"ct": folder / "CTres.nii.gz", "pet": folder / "SUV.nii.gz"})
    expected = predict_study(
        load_model(checkpoint), study_inputs(folder, ["ct", "pet"]), SlidingWindowSettings(precision="auto")
    )
    mask = np.asanyarray(result["mask"].dataobj)
    assert result["mask"].get_data_dtype() == np.uint8 and mask.dtype == np.uint8
    assert np.array_equal(mask, np.asanyarray(expected.mask.dataobj))
    assert np.array_equal(result["mask"].affine, nib.load(str(folder / "SUV.nii.gz")).affine)
    assert result["classification"] == expected.classification
    suv = np.asarray(nib.load(str(folder / "SUV.nii.gz")).dataobj, dtype=np.float32)
    assert result["lesions"] == table_dict(lesion_table(mask, suv, expected.mask.affine))
    assert result["label_names"] == {0: "background", 1: "lesion"}
    assert segmenter(folder, lesions=False)["lesions"] is None  # a study folder; no lesion table on request


def test_a_brain_model_segments_three_classes_without_a_lesion_table(tmp_path, brain_phantoms):
    torch.manual_seed(0)
    MirrorUNetModel(
        MirrorUNetConfig.from_preset("brats-v1", channels=[4, 8, 16, 32, 64], patch_size=[32, 32, 32])
    ).save_pretrained(tmp_path)
    case = sorted((brain_phantoms / "Task01_BrainTumour" / "imagesTr").glob("*.nii.gz"))[0]
    images = study_inputs(case, ["flair", "t1gd"])  # the MSD 4D image split into named images
    result = pipeline(PIPELINE_TASK, model=str(tmp_path), trust_remote_code=True)(images, precision="fp32")
    expected = predict_study(load_model(tmp_path), images, SlidingWindowSettings(precision="fp32"))
    assert np.array_equal(np.asanyarray(result["mask"].dataobj), np.asanyarray(expected.mask.dataobj))
    assert result["label_names"] == {0: "background", 1: "edema", 2: "non-enhancing tumour + enhancing tumour"}
    assert result["lesions"] is None and result["classification"] is None


def test_an_old_checkpoint_without_a_processor_runs_with_the_package_and_says_how_to_fix_it(
    checkpoint, tmp_path, autopet_phantoms
):
    old = old_copy(checkpoint, tmp_path / "old")
    study = lesion_study(autopet_phantoms)
    with pytest.warns(UserWarning) as caught:
        segmenter = pipeline(PIPELINE_TASK, model=str(old))  # the task comes from the package's registry
    message = str(caught[0].message)
    assert str(old) in message and "no Mirror U-Net preprocessor_config.json" in message
    assert "mirror-unet push" in message and "save_pretrained" in message
    assert segmenter.image_processor.study_file_names == {"ct": ["CTres.nii.gz"], "pet": ["SUV.nii.gz"]}
    current = pipeline(PIPELINE_TASK, model=str(checkpoint), trust_remote_code=True)
    assert np.array_equal(
        np.asanyarray(segmenter(study)["mask"].dataobj), np.asanyarray(current(study)["mask"].dataobj)
    )


@pytest.mark.parametrize(
    "inputs, error, fragment",
    [
        ({"pet": "SUV.nii.gz"}, ProcessorInputError, "modality 'ct' is missing; expected images for: ct, pet"),
        ("no/such/study", ProcessorInputError, "study no/such/study is not a folder"),
        (42, ProcessorInputError, "got a int; expected a study folder or a mapping modality -> NIfTI file"),
    ],
)
def test_bad_inputs_name_the_problem(checkpoint, inputs, error, fragment):
    segmenter = pipeline(PIPELINE_TASK, model=str(checkpoint), trust_remote_code=True)
    with pytest.raises(error, match=fragment):
        segmenter(inputs)


def test_an_unknown_argument_is_refused_with_the_accepted_ones(checkpoint):
    with pytest.raises(TypeError, match="got unknown argument\\(s\\) overlapp; accepted: lesions, precision, overlap"):
        pipeline(PIPELINE_TASK, model=str(checkpoint), trust_remote_code=True, overlapp=0.5)


# ------------------------------------------------------------------ from a Hub id, without the package

FRESH = (
    textwrap.dedent(
        """
    import json, sys
    import numpy as np
    from transformers import AutoImageProcessor, pipeline
    study, out = sys.argv[1], sys.argv[2]
    images = {"ct": study + "/CTres.nii.gz", "pet": study + "/SUV.nii.gz"}
    expected = np.load(out + "/expected.npz")

    processor = AutoImageProcessor.from_pretrained("NEW", trust_remote_code=True)
    assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
    assert np.array_equal(processor(images)["pixel_values"][0], expected["image"]), "pixel values differ"

    segmenter = pipeline("mirror-unet-segmentation", model="NEW", trust_remote_code=True)
    assert type(segmenter).__module__.startswith("transformers_modules"), type(segmenter).__module__
    result = segmenter(images)
    np.save(out + "/mask_dict.npy", np.asanyarray(result["mask"].dataobj))
    np.save(out + "/affine.npy", result["mask"].affine)
    json.dump({"lesions": result["lesions"], "classification": result["classification"],
               "label_names": result["label_names"]}, open(out + "/result.json", "w"))
    np.save(out + "/mask_folder_fp32.npy", np.asanyarray(segmenter(study, precision="fp32")["mask"].dataobj))
    np.save(out + "/mask_repushed.npy",
            np.asanyarray(pipeline("mirror-unet-segmentation", model="REPUSHED", trust_remote_code=True)(images)["mask"].dataobj))

    for what, load in (("processor", lambda: AutoImageProcessor.from_pretrained("OLD", trust_remote_code=True)),
                       ("pipeline", lambda: pipeline("mirror-unet-segmentation", model="OLD", trust_remote_code=True))):
        try:
            load()
            print(f"OLD-{what.upper()}-LOADED")
        except Exception as error:
            print(f"OLD-{what.upper()}-ERROR {type(error).__name__}: {str(error).splitlines()[0]}")
    print("FRESH-OK")
    """
    )
    .replace('"NEW"', repr(NEW))
    .replace('"OLD"', repr(OLD))
    .replace('"REPUSHED"', repr(REPUSHED))
)


def _predict(args: list[str]) -> dict:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["predict", *args]) == 0
    return json.loads(stdout.getvalue())


@pytest.fixture(scope="module")
def from_the_hub(tmp_path_factory, checkpoint, autopet_phantoms):
    """`mirror-unet predict` on a phantom study, then a fresh process without the package that loads the
    processor and the pipeline by Hub id: the pushed checkpoint, an old one uploaded as it was, and that old
    folder published again with `mirror-unet push`."""
    root = tmp_path_factory.mktemp("from_the_hub")
    study = lesion_study(autopet_phantoms)
    predicted = _predict(
        [
            "--model",
            str(checkpoint),
            "--input",
            f"ct={study / 'CTres.nii.gz'}",
            "--input",
            f"pet={study / 'SUV.nii.gz'}",
            "--out",
            str(root / "predict.nii.gz"),
            "--lesions",
            str(root / "lesions.csv"),
        ]
    )
    _predict(
        [
            "--model",
            str(checkpoint),
            "--study",
            str(study),
            "--out",
            str(root / "predict_fp32.nii.gz"),
            "--precision",
            "fp32",
        ]
    )
    config = MirrorUNetConfig.from_pretrained(checkpoint)
    np.savez(root / "expected.npz", image=preprocess_study(study_inputs(study, ["ct", "pet"]), config).image)
    old = old_copy(checkpoint, root / "old")
    with LoopbackHub(root / "hub") as hub:
        push_checkpoint(checkpoint, NEW, token=hub.token, endpoint=hub.url)
        api = HfApi(endpoint=hub.url, token=hub.token)
        api.create_repo(OLD)
        api.upload_folder(folder_path=str(old), repo_id=OLD)  # as an older version of the package published it
        with pytest.MonkeyPatch.context() as patch:  # the documented fix, through the command line
            patch.setattr(constants, "ENDPOINT", hub.url)
            patch.setenv("HF_TOKEN", hub.token)
            assert main(["push", "--model", str(old), "--repo-id", REPUSHED]) == 0
        fresh = run_python(WITHOUT_PACKAGE + FRESH, hub.env(root / "hf_home"), root, str(study), str(root), timeout=600)
        yield SimpleNamespace(root=root, hub=hub, study=study, predicted=predicted, fresh=fresh, old=old)


def test_from_a_hub_id_without_the_package_the_processor_and_pipeline_give_predicts_outputs(from_the_hub):
    hub_run = from_the_hub
    assert hub_run.fresh.returncode == 0, hub_run.fresh.stdout + hub_run.fresh.stderr
    assert "FRESH-OK" in hub_run.fresh.stdout
    root = hub_run.root
    written = nib.load(str(root / "predict.nii.gz"))
    mask = np.load(root / "mask_dict.npy")
    assert mask.dtype == np.uint8 and mask.any(), "an empty mask would prove little"
    assert np.array_equal(mask, np.asanyarray(written.dataobj))  # exactly, with predict's default precision
    assert np.allclose(
        np.load(root / "affine.npy"), written.affine, rtol=0, atol=1e-5
    )  # the mask file's float32 header
    result = json.loads((root / "result.json").read_text())
    assert result["lesions"] == json.loads((root / "lesions.json").read_text())  # predict --lesions' JSON
    assert result["classification"] == hub_run.predicted["classification"]
    assert result["label_names"] == {"0": "background", "1": "lesion"}
    folder_fp32 = np.asanyarray(nib.load(str(root / "predict_fp32.nii.gz")).dataobj)
    assert np.array_equal(np.load(root / "mask_folder_fp32.npy"), folder_fp32)  # a study folder, precision fp32


def test_an_old_hub_repo_is_fixed_by_pushing_it_again(from_the_hub):
    hub_run = from_the_hub
    assert hub_run.fresh.returncode == 0, hub_run.fresh.stdout + hub_run.fresh.stderr
    old_files = hub_run.hub.files(OLD)
    assert "preprocessor_config.json" not in old_files and "custom_pipelines" not in json.loads(
        old_files["config.json"]
    )
    # Without the package nothing of ours runs for an old repo: transformers' own errors name what is missing.
    assert f"OLD-PROCESSOR-ERROR OSError: Can't load image processor for '{OLD}'" in hub_run.fresh.stdout
    assert "containing a preprocessor_config.json file" in hub_run.fresh.stdout
    assert "OLD-PIPELINE-ERROR KeyError:" in hub_run.fresh.stdout
    assert "Unknown task mirror-unet-segmentation" in hub_run.fresh.stdout
    repushed = hub_run.hub.files(REPUSHED)
    assert set(COMPANION_FILES) <= set(repushed)
    config = json.loads(repushed["config.json"])
    assert (
        config["custom_pipelines"]["mirror-unet-segmentation"]["impl"]
        == "pipeline_mirror_unet.MirrorUNetSegmentationPipeline"
    )
    assert config["id2label"] == {"0": "background", "1": "lesion"}
    assert repushed["model.safetensors"] == (hub_run.old / "model.safetensors").read_bytes()
    assert (hub_run.old / "config.json").read_bytes() == old_files["config.json"]  # the folder was only read
    assert np.array_equal(np.load(hub_run.root / "mask_repushed.npy"), np.load(hub_run.root / "mask_dict.npy"))


def test_the_pipelines_lesion_columns_are_the_packages():
    """The pipeline is remote code and cannot import mirror_unet_hf.lesions, so it keeps its own copy of the
    column names: this fails when the two drift."""
    from mirror_unet_hf import lesions, pipeline_mirror_unet

    assert pipeline_mirror_unet.LESION_COLUMNS == lesions.LESION_COLUMNS
