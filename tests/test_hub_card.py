"""The generated model card: metadata, model-index, a description made from the config, phantom wording."""

import json
import re
from pathlib import Path

import jinja2
import pytest
import tomllib
import torch
from conftest_hub import autopet_metrics, save_checkpoint, small_config
from hub_server import validate_card_metadata
from huggingface_hub import ModelCard
from huggingface_hub.repocard import RepoCard

from mirror_unet_hf import MirrorUNetModel
from mirror_unet_hf.errors import UserInputError
from mirror_unet_hf.hub import MODEL_CARD_TEMPLATE, build_model_card, model_card_context

REPO_ID = "tester/mirror-unet-small"


@pytest.fixture(scope="module")
def autopet_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("autopet")
    return save_checkpoint(
        MirrorUNetModel(small_config("autopet-v3")),
        folder,
        metrics=autopet_metrics(),
        training_args={
            "preset": "autopet-v3",
            "dataset": "autopet",
            "max_steps": 25000,
            "learning_rate": 0.001,
            "patch_size": [96, 96, 96],
            "phantoms": False,
            "hub_token": "hf_secret_value",
        },
    )


@pytest.fixture(scope="module")
def brats_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("brats")
    metrics = {
        "task": "brain_tumour",
        "dataset": "msd-task01",
        "split": "validation",
        "num_studies": 96,
        "metrics": {"dice_wt": 0.91, "dice_tc": 0.84, "dice_et": None, "hd95_wt": 4.5},
    }
    return save_checkpoint(MirrorUNetModel(small_config("brats-v1")), folder, metrics=metrics)


def section(card: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", card, re.MULTILINE | re.DOTALL)
    assert match, f"card has no '## {title}' section"
    return match.group(1)


def test_card_metadata_names_licence_library_pipeline_and_tags(autopet_dir):
    card = ModelCard(str(build_model_card(autopet_dir, REPO_ID)))
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0"
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "image-segmentation"
    assert {"mirror-unet", "medical-imaging", "pet-ct", "3d", "segmentation", "autopet-v3"} <= set(data["tags"])
    assert "mri" not in data["tags"]
    assert data["datasets"] == ["autopet"]
    assert data["metrics"] == ["dice", "fpv_ml", "fnv_ml"]
    assert validate_card_metadata(str(card)) == []


def test_model_index_equals_the_metrics_file(autopet_dir, tmp_path):
    other = autopet_metrics(dice=0.6789, fpv=0.25, fnv=None, dataset="ns/autopet-holdout")
    metrics_path = tmp_path / "holdout.json"
    metrics_path.write_text(json.dumps(other))
    card = ModelCard(str(build_model_card(autopet_dir, REPO_ID, metrics_path=metrics_path)))  # re-parsed from text
    results = card.data.eval_results
    assert {r.metric_type: r.metric_value for r in results} == {"dice": 0.6789, "fpv_ml": 0.25}  # null fnv left out
    assert {(r.task_type, r.dataset_type, r.dataset_split) for r in results} == {
        ("image-segmentation", "ns/autopet-holdout", "validation")
    }
    assert card.data.model_name == "mirror-unet-small"
    evaluation = section(card.text, "Evaluation")
    assert "| Dice (`dice`) | 0.6789 |" in evaluation
    assert "| False-negative volume (ml) (`fnv_ml`) | n/a |" in evaluation
    assert "12 studies" in evaluation


def test_brain_tumour_card_describes_the_variant_from_its_config(brats_dir):
    config = small_config("brats-v1")
    card = ModelCard(str(build_model_card(brats_dir, "lab/brats")))
    assert "mri" in card.data.tags and "pet-ct" not in card.data.tags
    description = section(card.text, "Model description")
    for row in config.describe():
        assert f"| {row['part']} | {row['inputs']} | {row['task']} |" in description
    assert "union of the segmentations of branches `flair`, `t1gd`" in description
    assert (
        "class 1 = edema (label value 1), class 2 = non-enhancing tumour + enhancing tumour (label value 2)"
        in description
    )
    parameters = sum(p.numel() for p in MirrorUNetModel(config).parameters())
    assert f"**Parameters**: {parameters:,} " in description
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        "dice_wt": 0.91,
        "dice_tc": 0.84,
        "hd95_wt": 4.5,
    }


def test_card_states_the_input_contract(autopet_dir, brats_dir):
    contract = section(build_model_card(autopet_dir, REPO_ID).text, "Input")
    assert "`pixel_values` of shape `(batch, 2, D, H, W)`" in contract
    assert "| 0 | ct | clip to [-100, 250], scale to [0, 1] |" in contract
    assert "| 1 | pet | clip to [0, 15], scale to [0, 1] |" in contract
    assert "**Voxel spacing**: 2 × 2 × 3 mm" in contract
    assert "**Orientation**: RAS" in contract
    assert "**Reference grid**: the `pet` image" in contract
    assert "multiples of 16" in contract
    brats = section(build_model_card(brats_dir, "lab/brats").text, "Input")
    assert "| 0 | flair | z-score over non-zero voxels |" in brats and "| 1 | t1gd | z-score" in brats
    assert "**Voxel spacing**: 1 × 1 × 1 mm" in brats and "**Reference grid**: the `t1gd` image" in brats


def test_how_to_use_loads_by_repo_id_and_names_the_predict_command(autopet_dir):
    text = section(build_model_card(autopet_dir, REPO_ID, revision="v2").text, "How to use")
    code = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert len(code) == 2  # the pipeline, then the network alone
    pipeline_block, model_block = code
    assert (
        f'pipeline("mirror-unet-segmentation", model="{REPO_ID}", trust_remote_code=True, revision="v2")'
        in pipeline_block
    )
    assert 'segmenter({"ct": "CTres.nii.gz", "pet": "SUV.nii.gz"})' in pipeline_block  # the AutoPET file names
    assert 'result["lesions"]["summary"]' in pipeline_block  # a PET model: the lesion table
    assert f'AutoModel.from_pretrained("{REPO_ID}", trust_remote_code=True, revision="v2")' in model_block
    assert "torch.rand(1, 2, 96, 96, 96)" in model_block  # (B, M, *patch_size)
    for block in code:
        assert "mirror-unet predict" not in block  # named in prose: it needs the package, the blocks must not
    assert f"mirror-unet predict --model {REPO_ID} --study DIR --out seg.nii.gz" in text


def test_how_to_use_has_the_install_line_and_the_repository_url_is_the_projects(autopet_dir, brats_dir):
    text = section(build_model_card(autopet_dir, REPO_ID).text, "How to use")
    install = re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
    assert len(install) == 1 and "pip install torch transformers nibabel scipy" in install[0]
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    repository = pyproject["project"]["urls"]["Repository"]
    assert f'pip install "mirror-unet-hf @ git+{repository}"' in install[0]
    brats = section(build_model_card(brats_dir, REPO_ID).text, "How to use")
    assert 'segmenter({"flair": "flair.nii.gz", "t1gd": "t1gd.nii.gz"})' in brats
    assert '"lesions"' not in brats  # no PET: no lesion table


def test_training_section_lists_arguments_but_never_credentials(autopet_dir):
    text = build_model_card(autopet_dir, REPO_ID).text
    training = section(text, "Training")
    assert "| `max_steps` | 25000 |" in training
    assert "| `patch_size` | 96 × 96 × 96 |" in training
    assert "hub_token" not in text and "hf_secret_value" not in text


@pytest.mark.parametrize(
    "training_args, phantom",
    [
        ({"dataset": "autopet", "phantoms": True}, True),
        ({"dataset": "/data/autopet-phantoms-v1"}, True),
        ({"dataset": "autopet", "phantoms": False}, False),
        (None, False),
    ],
)
def test_phantom_trained_weights_say_so_plainly(tmp_path, training_args, phantom):
    torch.manual_seed(0)
    folder = save_checkpoint(MirrorUNetModel(small_config("autopet-v1")), tmp_path, training_args=training_args)
    card = build_model_card(folder, REPO_ID)
    assert ("**Trained on synthetic phantoms, not on patient images.**" in card.text) is phantom
    assert (
        "**These weights were trained on synthetic phantoms.**" in section(card.text, "Intended use and limitations")
    ) is phantom
    assert ("synthetic-data" in card.data.tags) is phantom
    assert "**This is not a medical device**" in card.text


@pytest.mark.parametrize("base_model", ["tester/mirror-unet-autopet-v3", None])
def test_a_fine_tuned_run_names_its_base_model(tmp_path, base_model):
    """train.py --model_name_or_path records the Hub id it started from (None for a local folder)."""
    torch.manual_seed(0)
    training_args = {
        "preset": "autopet-v1",
        "dataset": "autopet",
        "model_name_or_path": "/ckpt/final",
        "base_model": base_model,
    }
    folder = save_checkpoint(MirrorUNetModel(small_config("autopet-v1")), tmp_path, training_args=training_args)
    card = ModelCard(str(build_model_card(folder, REPO_ID)))  # re-parsed from text
    assert card.data.to_dict().get("base_model") == base_model
    assert validate_card_metadata(str(card)) == []


def test_card_without_metrics_has_no_model_index(tmp_path):
    torch.manual_seed(0)
    folder = save_checkpoint(MirrorUNetModel(small_config("autopet-pet-only")), tmp_path)
    card = ModelCard(str(build_model_card(folder, REPO_ID)))
    assert card.data.eval_results is None and "model-index" not in card.data.to_dict()
    assert "No evaluation results were published" in section(card.text, "Evaluation")
    assert "No training arguments were published" in section(card.text, "Training")


def test_citation_is_the_papers_bibtex(autopet_dir):
    citation = section(build_model_card(autopet_dir, REPO_ID).text, "Citation")
    assert "@inproceedings{marinov2023mirror," in citation
    assert (
        "Marinov, Zdravko and Rei{\\ss}, Simon and Kersting, David and Kleesiek, Jens and Stiefelhagen, Rainer"
        in citation
    )
    assert "eprint    = {2303.07126}" in citation and "ICCV" in citation and "2023" in citation


def test_template_uses_only_variables_it_is_given(autopet_dir):
    card_data, context = model_card_context(autopet_dir, REPO_ID)
    strict = jinja2.Environment(undefined=jinja2.StrictUndefined)
    rendered = strict.from_string(MODEL_CARD_TEMPLATE.read_text()).render(card_data=card_data.to_yaml(), **context)
    assert rendered.strip() == build_model_card(autopet_dir, REPO_ID).content.strip()


def test_templates_ship_as_package_data():
    package = Path(__file__).resolve().parents[1] / "mirror_unet_hf"
    assert MODEL_CARD_TEMPLATE.parent == package / "hub_cards"
    pyproject = tomllib.loads((package.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["mirror_unet_hf"]
    for template in MODEL_CARD_TEMPLATE.parent.glob("*"):
        assert any(template.relative_to(package).match(p) for p in patterns), template


@pytest.mark.parametrize(
    "metrics, message",
    [
        ({"task": "autopet"}, "lacks dataset, split, num_studies, metrics"),
        ({**autopet_metrics(), "task": "brats"}, "task 'brats' is unknown"),
        ({**autopet_metrics(), "num_studies": 0}, "num_studies 0 must be a positive integer"),
        ({**autopet_metrics(), "metrics": {"dice": "high"}}, "metric 'dice' is 'high'"),
        ({**autopet_metrics(), "task": "brain_tumour"}, "does not fit this PET/CT model"),
    ],
)
def test_bad_metrics_file_is_a_user_error_naming_the_file(autopet_dir, tmp_path, metrics, message):
    path = tmp_path / "bad_metrics.json"
    path.write_text(json.dumps(metrics))
    with pytest.raises(UserInputError, match=re.escape(message)) as info:
        build_model_card(autopet_dir, REPO_ID, metrics_path=path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_weights_that_do_not_match_the_config_are_refused(autopet_dir, tmp_path):
    folder = tmp_path / "mismatch"
    folder.mkdir()
    for name in ("configuration_mirror_unet.py", "modeling_mirror_unet.py", "model.safetensors"):
        (folder / name).write_bytes((autopet_dir / name).read_bytes())
    small_config("autopet-v1").save_pretrained(folder)  # no bottleneck decoder or head in this config
    with pytest.raises(UserInputError, match="does not match .*config.json: .*unexpected tensor"):
        build_model_card(folder, REPO_ID)


def test_card_text_round_trips_through_repocard(autopet_dir, tmp_path):
    card = build_model_card(autopet_dir, REPO_ID)
    card.save(tmp_path / "README.md")
    again = RepoCard.load(tmp_path / "README.md")
    assert again.data.to_dict() == card.data.to_dict()
    assert again.text == card.text
