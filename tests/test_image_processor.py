"""The image processor (`image_processing_mirror_unet.py`): the same arrays as `preprocess_study`, saved as
`preprocessor_config.json` by every `save_pretrained`, loaded by `AutoImageProcessor` with and without the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from hub_server import hub_fixture  # noqa: F401  (the `hub` fixture)
from transformers import AutoImageProcessor

from mirror_unet_hf import MirrorUNetConfig, MirrorUNetModel
from mirror_unet_hf.configuration_mirror_unet import PRESETS
from mirror_unet_hf.data import PreprocessingConfig, preprocess_study
from mirror_unet_hf.image_processing_mirror_unet import MirrorUNetImageProcessor, ProcessorInputError
from mirror_unet_hf.inference import study_inputs

SMALL = {"channels": [4, 8, 16, 32, 64], "patch_size": [32, 32, 32]}
STS = "autopet_layout/FDG-PET-CT-Lesions/PETCT_sts002/01-01-2000-NA-study"
PACKAGE = Path(__file__).resolve().parents[1] / "mirror_unet_hf"
CODE = (
    "image_processing_mirror_unet.py",
    "pipeline_mirror_unet.py",
    "sliding_window.py",
    "window_merging.py",
    "errors.py",
)


def processor_for(config) -> MirrorUNetImageProcessor:
    return MirrorUNetImageProcessor(
        modalities=list(config.modalities),
        reference_modality=config.reference_modality,
        target_spacing=config.target_spacing,
        intensity_windows=config.intensity_windows,
    )


def assert_same_as_the_package(images, config):
    """The processor's pixel values and inverse mapping equal preprocess_study's, array for array."""
    study = preprocess_study(images, config)
    processor = processor_for(config)
    features = processor(images)
    assert features["pixel_values"].dtype == np.float32
    assert np.array_equal(features["pixel_values"][0], study.image)
    grid = features["grid"]
    assert grid.shape == study.image.shape[1:] and np.array_equal(grid.affine, study.affine)
    assert grid.reference_shape == study.reference_shape and np.array_equal(
        grid.reference_affine, study.reference_affine
    )
    labels = (study.image[-1] > np.median(study.image[-1])).astype(np.uint8)
    assert np.array_equal(processor.restore(labels, grid, order=0), study.restore(labels, order=0))
    assert np.array_equal(processor.restore(study.image, grid, order=1), study.restore(study.image, order=1))
    mask = processor.post_process_semantic_segmentation(labels, grid)
    assert mask.shape == tuple(study.reference_shape) and np.array_equal(mask.affine, study.reference_affine)
    assert mask.get_data_dtype() == np.uint8
    return features


# ------------------------------------------------------------------ one implementation: the same arrays


def test_native_grids_are_resampled_exactly_as_the_package_does(shared_data):
    native = shared_data / "petct_native" / "STS_002"  # CT at 0.98 mm, PET at 5.47 mm, LPS-like axes
    images = {"ct": native / "CT.nii.gz", "pet": native / "SUV.nii.gz"}
    features = assert_same_as_the_package(images, PreprocessingConfig.for_dataset("autopet"))
    assert features["grid"].spacing == pytest.approx((2.0, 2.0, 3.0))


def test_autopet_layout_study_folder_gives_the_package_arrays(shared_data):
    folder = shared_data / STS
    config = MirrorUNetConfig.from_preset("autopet-v3")
    processor = MirrorUNetImageProcessor.from_model_config(config)
    assert processor.study_images(folder) == {"ct": folder / "CTres.nii.gz", "pet": folder / "SUV.nii.gz"}
    assert np.array_equal(
        processor(folder)["pixel_values"][0], preprocess_study(study_inputs(folder, ["ct", "pet"]), config).image
    )


def test_brain_mri_is_z_scored_exactly_as_the_package_does(shared_data):
    image = nib.load(str(shared_data / "msd_task01_sample" / "imagesTr" / "BRATS_sample.nii.gz"))
    config = MirrorUNetConfig.from_preset("brats-v1")
    images = study_inputs(shared_data / "msd_task01_sample" / "imagesTr" / "BRATS_sample.nii.gz", ["flair", "t1gd"])
    assert image.shape[-1] == 4 and set(images) == {"flair", "t1gd"}
    assert_same_as_the_package(images, config)


def test_phantoms_give_the_package_arrays(autopet_phantoms, brain_phantoms):
    study = next(p.parent for p in sorted(autopet_phantoms.rglob("SUV.nii.gz")))
    assert_same_as_the_package(
        {"ct": study / "CTres.nii.gz", "pet": study / "SUV.nii.gz"}, MirrorUNetConfig.from_preset("autopet-v1")
    )
    case = next(iter(sorted((brain_phantoms / "Task01_BrainTumour" / "imagesTr").glob("*.nii.gz"))))
    assert_same_as_the_package(study_inputs(case, ["flair", "t1gd"]), MirrorUNetConfig.from_preset("brats-v2"))


def test_oblique_permuted_axes_and_a_shifted_ct_come_back_on_the_reference_grid():
    rotation = np.array([[0, 0, -2.5], [0, -1.5, 0], [3, 0, 0]], dtype=float)
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = rotation, (10, 5, -7)
    rng = np.random.default_rng(0)
    pet = nib.Nifti1Image(rng.random((20, 25, 18)).astype(np.float32) * 10, affine)
    ct_affine = affine.copy()
    ct_affine[:3, 3] += (1.3, -0.7, 2.1)  # another grid in the same world: resampled through the affines
    ct = nib.Nifti1Image(rng.normal(0, 300, (22, 24, 19)).astype(np.float32), ct_affine)
    config = PreprocessingConfig(("ct", "pet"), "pet", (1.5, 0.75, 1.25), {"ct": (-100.0, 250.0)})
    features = assert_same_as_the_package({"ct": ct, "pet": pet}, config)
    assert nib.aff2axcodes(features["grid"].affine) == ("R", "A", "S")


# ------------------------------------------------------------------ saving and loading


def test_every_presets_save_pretrained_writes_the_processor_of_its_config(tmp_path):
    for preset in sorted(PRESETS):
        torch.manual_seed(0)
        config = MirrorUNetConfig.from_preset(preset, **SMALL)
        folder = tmp_path / preset
        MirrorUNetModel(config).save_pretrained(folder)
        saved = json.loads((folder / "preprocessor_config.json").read_text())
        assert saved["auto_map"] == {"AutoImageProcessor": "image_processing_mirror_unet.MirrorUNetImageProcessor"}
        assert saved["image_processor_type"] == "MirrorUNetImageProcessor"
        processor = MirrorUNetImageProcessor.from_pretrained(folder)
        assert processor.modalities == config.modalities and processor.reference_modality == config.reference_modality
        assert processor.target_spacing == config.target_spacing
        assert processor.intensity_windows == (config.intensity_windows or {})
        assert all((folder / name).read_bytes() == (PACKAGE / name).read_bytes() for name in CODE), preset
        assert json.loads((folder / "config.json").read_text())["custom_pipelines"]["mirror-unet-segmentation"][
            "impl"
        ] == ("pipeline_mirror_unet.MirrorUNetSegmentationPipeline")


def test_autopet_processors_know_the_study_file_names_from_the_task_registry(tmp_path):
    processor = MirrorUNetImageProcessor.from_model_config(MirrorUNetConfig.from_preset("autopet-v3"))
    assert processor.study_file_names == {"ct": ["CTres.nii.gz"], "pet": ["SUV.nii.gz"]}
    processor.save_pretrained(tmp_path)
    assert MirrorUNetImageProcessor.from_pretrained(tmp_path).to_dict() == processor.to_dict()


def test_auto_image_processor_resolves_in_process(model_dir):
    processor = AutoImageProcessor.from_pretrained(model_dir)
    assert type(processor) is MirrorUNetImageProcessor
    assert processor.modalities == ["ct", "pet"] and processor.target_spacing == [2.0, 2.0, 3.0]


def test_the_training_export_writes_the_processor_and_the_pipeline(tmp_path):
    from mirror_unet_hf.training.export import Exporter

    accelerator = SimpleNamespace(is_main_process=True, unwrap_model=lambda model: model)
    torch.manual_seed(0)
    model = MirrorUNetModel(MirrorUNetConfig.from_preset("brats-v1", **SMALL))
    Exporter(accelerator, tmp_path, {"dataset": "brain_tumour", "phantoms": True}).save(model, "best", None, step=1)
    names = {p.name for p in (tmp_path / "best").iterdir()}
    assert {"preprocessor_config.json", *CODE, "config.json", "model.safetensors", "training_args.json"} <= names


REMOTE = textwrap.dedent(
    """
    import sys
    sys.modules["mirror_unet_hf"] = None  # the package must not be importable here
    try:
        import mirror_unet_hf  # noqa: F401
        raise SystemExit("mirror_unet_hf is importable; the test would prove nothing")
    except ImportError:
        pass
    import numpy as np
    from transformers import AutoImageProcessor
    folder, study, expected = sys.argv[1], sys.argv[2], np.load(sys.argv[3])
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
    features = processor(study, return_tensors="pt")
    assert np.array_equal(features["pixel_values"].numpy()[0], expected["image"]), "pixel values differ"
    restored = processor.restore(expected["labels"], features["grid"], order=0)
    assert np.array_equal(restored, expected["restored"]), "inverse mapping differs"
    print("REMOTE-PROCESSOR-OK", processor.study_file_names)
    """
)


def test_auto_image_processor_loads_in_a_fresh_process_without_the_package(tmp_path, model_dir, shared_data):
    study = shared_data / STS
    config = MirrorUNetConfig.from_pretrained(model_dir)
    preprocessed = preprocess_study(study_inputs(study, ["ct", "pet"]), config)
    labels = (preprocessed.image[1] > 0.1).astype(np.uint8)
    np.savez(
        tmp_path / "expected.npz",
        image=preprocessed.image,
        labels=labels,
        restored=preprocessed.restore(labels, order=0),
    )
    script = tmp_path / "remote_processor.py"
    script.write_text(REMOTE)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, str(script), str(model_dir), str(study), str(tmp_path / "expected.npz")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "REMOTE-PROCESSOR-OK {'ct': ['CTres.nii.gz'], 'pet': ['SUV.nii.gz']}" in result.stdout


# ------------------------------------------------------------------ bad inputs and settings


def _image(shape=(6, 6, 6), affine=None, value=1.0):
    return nib.Nifti1Image(np.full(shape, value, np.float32), np.eye(4) if affine is None else affine)


def _shifted(mm):
    affine = np.eye(4)
    affine[0, 3] = mm
    return affine


@pytest.mark.parametrize(
    "images, fragments",
    [
        ({"ct": _image()}, ["modality 'pet' is missing", "ct, pet"]),
        ({"ct": _image(), "pet": _image(), "mri": _image()}, ["unknown modality 'mri'", "accepted: ct, pet"]),
        ({"ct": _image(), "pet": _image((6, 6, 6, 3))}, ["pet image", "4D", "expected a 3D volume"]),
        ({"ct": _image(value=np.nan), "pet": _image()}, ["ct image", "NaN"]),
        ({"ct": _image(affine=_shifted(500.0)), "pet": _image()}, ["ct image", "does not overlap"]),
        ({"ct": "no/such/CTres.nii.gz", "pet": _image()}, ["no/such/CTres.nii.gz", "file not found"]),
        ({"ct": 3, "pet": _image()}, ["got a int", "expected a NIfTI file path or a nibabel image"]),
        (["CTres.nii.gz"], ["got a list", "expected a study folder or a mapping"]),
    ],
)
def test_bad_inputs_name_the_file_and_what_was_expected(images, fragments):
    processor = MirrorUNetImageProcessor(modalities=["ct", "pet"], reference_modality="pet")
    with pytest.raises(ProcessorInputError) as caught:
        processor(images)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


def test_a_study_folder_without_a_modality_names_the_files_looked_for(tmp_path):
    nib.save(_image(), tmp_path / "pet.nii.gz")
    processor = MirrorUNetImageProcessor(
        modalities=["ct", "pet"], reference_modality="pet", study_file_names={"ct": ["CTres.nii.gz"]}
    )
    with pytest.raises(
        ProcessorInputError, match=r"no file for modality 'ct'; looked for CTres.nii.gz, ct.nii.gz, ct.nii"
    ):
        processor(tmp_path)
    with pytest.raises(ProcessorInputError, match="is not a folder"):
        processor(tmp_path / "missing")


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ({"modalities": ["ct", "pet"], "reference_modality": "mr"}, "reference_modality 'mr'"),
        ({"modalities": ["ct", "ct"], "reference_modality": "ct"}, "distinct names"),
        ({"modalities": ["pet"], "reference_modality": "pet", "target_spacing": [1, 0, 1]}, "target_spacing"),
        ({"modalities": ["pet"], "reference_modality": "pet", "intensity_windows": {"pet": [15, 0]}}, "high > low"),
    ],
)
def test_bad_settings_are_refused_when_the_processor_is_made(settings, fragment):
    with pytest.raises(ProcessorInputError, match=fragment):
        MirrorUNetImageProcessor(**settings)


def test_an_array_off_the_preprocessed_grid_is_refused():
    processor = MirrorUNetImageProcessor(modalities=["pet"], reference_modality="pet", target_spacing=[2.0, 2.0, 2.0])
    grid = processor({"pet": _image((8, 8, 8))})["grid"]
    with pytest.raises(ProcessorInputError, match=r"not on the preprocessed grid; expected \(C, \(4, 4, 4\)\)"):
        processor.restore(np.zeros((5, 4, 4)), grid)


PUSH_WITH_TRANSFORMERS = """
import sys, torch
from mirror_unet_hf import MirrorUNetConfig, MirrorUNetModel
torch.manual_seed(0)
model = MirrorUNetModel(MirrorUNetConfig.from_preset("autopet-v1", channels=[4, 8, 16, 32, 64]))
model.save_pretrained(sys.argv[1], push_to_hub=True, repo_id="tester/pushed-by-transformers")
print("PUSHED")
"""


def test_save_pretrained_with_push_to_hub_uploads_the_processor_and_the_pipeline_too(hub, tmp_path):
    from conftest_hub import run_python

    result = run_python(PUSH_WITH_TRANSFORMERS, hub.env(tmp_path / "hf_home"), tmp_path, str(tmp_path / "saved"))
    assert result.returncode == 0 and "PUSHED" in result.stdout, result.stdout + result.stderr
    pushed = hub.files("tester/pushed-by-transformers")
    assert {"config.json", "model.safetensors", "preprocessor_config.json", *CODE} <= set(pushed)
    assert pushed["preprocessor_config.json"] == (tmp_path / "saved" / "preprocessor_config.json").read_bytes()
