"""MirrorUNetConfig: presets, validation of bad values, serialisation."""

import pytest
from huggingface_hub.errors import StrictDataclassClassValidationError

from mirror_unet_hf import PRESETS, MirrorUNetConfig, list_presets

REQUIRED_PRESETS = {
    "autopet-v1",
    "autopet-v2",
    "autopet-v3",
    "autopet-v3-diagnosis",
    "autopet-decision-fusion",
    "autopet-early-fusion",
    "autopet-late-fusion",
    "autopet-pet-only",
    "brats-v1",
    "brats-v2",
    "brats-v2-rec",
    "brats-4branch",
}


def test_every_required_preset_is_listed():
    assert set(list_presets()) >= REQUIRED_PRESETS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_survives_a_json_round_trip(name):
    config = MirrorUNetConfig.from_preset(name)
    again = MirrorUNetConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    assert again.preset == name


def test_paper_variants_have_the_reference_tasks():
    v1 = MirrorUNetConfig.from_preset("autopet-v1")
    assert [(b["name"], b["task"]) for b in v1.branches] == [("ct", "reconstruction"), ("pet", "segmentation")]
    assert v1.bottleneck_decoder is None and v1.classification_head is None
    v2 = MirrorUNetConfig.from_preset("autopet-v2")
    assert v2.bottleneck_decoder == {"task": "reconstruction", "targets": ["pet"]}
    assert v2.bottleneck_decoder_style == "official" and MirrorUNetConfig().bottleneck_decoder_style == "light"
    v3 = MirrorUNetConfig.from_preset("autopet-v3")
    assert v3.classification_head == {"branch": "pet", "task": "lesion_presence"}
    assert v3.final_mask_rule == "branch" and v3.final_mask_branches == ["pet"]
    assert (v3.lambda_seg, v3.lambda_rec, v3.lambda_cls) == (1.0, 0.1, 0.1)
    assert v3.shared_layers == ["bottleneck"]


def test_brats_v1_maps_edema_and_core_to_the_dataset_labels():
    config = MirrorUNetConfig.from_preset("brats-v1")
    assert config.branch("flair")["classes"] == [[1]]
    assert config.branch("t1gd")["classes"] == [[2, 3]]
    assert config.final_label_groups == [[1], [2, 3]]
    assert config.final_label_values == [0, 1, 2]


def test_overrides_replace_preset_fields():
    config = MirrorUNetConfig.from_preset("autopet-v3", channels=[8, 16, 32, 64, 128], lambda_cls=0.01)
    assert config.channels == [8, 16, 32, 64, 128] and config.lambda_cls == 0.01
    assert config.preset == "autopet-v3"


def test_auto_map_names_all_three_auto_classes():
    assert set(MirrorUNetConfig().auto_map) == {"AutoConfig", "AutoModel", "AutoModelForSemanticSegmentation"}


def test_unknown_preset_names_the_value_and_the_choices():
    with pytest.raises(ValueError, match=r"unknown preset 'autopet-v9'.*autopet-v3"):
        MirrorUNetConfig.from_preset("autopet-v9")


def _branch(name, task="segmentation", **extra):
    spec = {"name": name, "inputs": [name], "task": task}
    if task == "segmentation":
        spec["classes"] = [[1]]
    spec.update(extra)
    return spec


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"branches": [_branch("pet", task="segmentaton")]},
            r"task 'segmentaton'; expected one of: segmentation, reconstruction, none",
        ),
        ({"branches": [_branch("pet"), _branch("pet")]}, r"branch 'pet' is named twice"),
        ({"final_mask_branches": ["mri"]}, r"`final_mask_branches` names branch 'mri'; expected one of: ct, pet"),
        ({"final_mask_branches": ["ct"]}, r"branch 'ct', whose task is 'reconstruction'"),
        ({"branches": [_branch("pet", inputs=["spect"])]}, r"reads modality 'spect', which is not in `modalities`"),
        ({"branches": [_branch("pet", classes=[[4]])]}, r"uses label 4 .*expected foreground labels 1..1"),
        ({"shared_layers": ["encoder.7"]}, r"names 'encoder.7'; expected any of: bottleneck, encoder.0"),
        ({"final_mask_rule": "vote"}, r"`final_mask_rule` is 'vote'; expected one of: branch, union, mean_logits"),
        ({"norm": "layer"}, r"`norm` is 'layer'; expected one of: batch, instance, group"),
        ({"strides": [2, 2, 2]}, r"`strides` \[2, 2, 2\] must have len\(channels\) - 1 = 4 entries"),
        (
            {"patch_size": [96, 96, 40]},
            r"`patch_size` \[96, 96, 40\] must be three positive multiples of the total stride 16",
        ),
        ({"modalities": ["ct", "ct"]}, r"modality 'ct' is listed twice"),
        (
            {"classification_head": {"branch": "mri", "task": "lesion_presence"}},
            r"reads branch 'mri'; expected one of: ct, pet",
        ),
        ({"bottleneck_decoder": {"task": "denoise"}}, r"task 'denoise'; expected one of: segmentation, reconstruction"),
        (
            {"bottleneck_decoder_style": "heavy"},
            r"`bottleneck_decoder_style` is 'heavy'; expected one of: light, official",
        ),
        ({"dice_reduction": "global"}, r"`dice_reduction` is 'global'; expected one of: sample, batch"),
        ({"reconstruction_reduction": "max"}, r"`reconstruction_reduction` is 'max'; expected one of: sum, mean"),
        ({"dice_weight": -0.5}, r"`dice_weight` is -0.5; loss weights must be >= 0"),
        (
            {"classification_head": {"branch": "pet", "task": "lesion_presence", "pooling": "max"}},
            r"pooling 'max'; expected one of: global, flatten",
        ),
        ({"classification_target": "study"}, r"'study' is the target of a lesion-presence head; this config has no"),
        ({"fusion_loss": "fused"}, r"`fusion_loss` 'fused' is a decision-fusion setting; it needs `final_mask_rule`"),
        (
            {
                "branches": [_branch("ct"), _branch("pet")],
                "final_mask_rule": "mean_logits",
                "final_mask_branches": ["ct", "pet"],
                "fusion_weights": [0.2, 0.2],
                "fusion_parametrisation": "scalar",
            },
            r"'scalar' takes two final-mask branches weighted w and 1 - w; `fusion_weights` is \[0.2, 0.2\]",
        ),
    ],
)
def test_bad_config_values_raise_naming_the_value(kwargs, message):
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        MirrorUNetConfig(**kwargs)


def test_wrong_field_type_is_refused():
    with pytest.raises(Exception, match="num_res_units"):
        MirrorUNetConfig(num_res_units="two")


def test_union_of_overlapping_label_groups_is_refused():
    with pytest.raises(StrictDataclassClassValidationError, match="disjoint"):
        MirrorUNetConfig.from_preset(
            "brats-v1",
            branches=[
                {"name": "flair", "task": "segmentation", "classes": [[1, 2]]},
                {"name": "t1gd", "task": "segmentation", "classes": [[2, 3]]},
            ],
        )


def test_a_config_error_reads_as_one_line_without_the_validator_wrapping():
    from mirror_unet_hf.errors import CONFIG_ERRORS, one_line

    with pytest.raises(CONFIG_ERRORS) as caught:
        MirrorUNetConfig.from_preset("autopet-v3", lambda_rec=-1)
    assert one_line(caught.value) == "`lambda_rec` is -1; loss weights must be >= 0"
