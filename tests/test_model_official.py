"""The options that reproduce the authors' code: loss settings (batch Dice, Dice/CE weights, background, one MSE
over the reconstructions, decision fusion by one scalar and one loss, study-level target) and structure
(official bottleneck decoder, flatten classification head)."""

import pytest
import torch
from torch import nn

from mirror_unet_hf import MirrorUNetConfig, MirrorUNetModel
from mirror_unet_hf.modeling_mirror_unet import dice_ce_loss

SIDE = 32
SMALL = [4, 8, 16, 32, 64]
monai_losses = pytest.importorskip("monai.losses")


def logits_and_target(seed=0, classes=3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, classes, 8, 8, 8, generator=g) * 2
    target = torch.randint(0, classes, (3, 8, 8, 8), generator=g)
    target[2] = 0  # one sample without foreground: sample and batch pooling differ most there
    return logits, target


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("include_background", [False, True])
def test_dice_matches_monai_dice_loss(batch, include_background):
    logits, target = logits_and_target()
    monai = monai_losses.DiceLoss(to_onehot_y=True, softmax=True, include_background=include_background, batch=batch)
    ours = dice_ce_loss(
        logits, target, ce_weight=0.0, reduction="batch" if batch else "sample", include_background=include_background
    )
    torch.testing.assert_close(ours, monai(logits, target[:, None]), rtol=1e-6, atol=1e-6)


def test_weighted_dice_ce_matches_monai_dice_ce_loss_of_the_official_recipe():
    logits, target = logits_and_target(1, classes=2)
    monai = monai_losses.DiceCELoss(
        to_onehot_y=True, softmax=True, include_background=False, batch=True, lambda_dice=0.5, lambda_ce=0.5
    )
    ours = dice_ce_loss(logits, target, dice_weight=0.5, ce_weight=0.5, reduction="batch")
    torch.testing.assert_close(ours, monai(logits, target[:, None]), rtol=1e-6, atol=1e-6)


def test_sum_reducer_sees_the_batch_sums():
    logits, target = logits_and_target()
    seen = []
    dice_ce_loss(logits, target, reduction="batch", sum_reducer=lambda sums: seen.append(sums.shape) or sums)
    assert seen == [torch.Size([2, 2])]  # (intersection, denominator) × foreground classes


def batch(config, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, len(config.modalities), SIDE, SIDE, SIDE, generator=g)
    labels = (torch.rand(2, SIDE, SIDE, SIDE, generator=g) > 0.9).long()
    return x, labels


def test_config_loss_fields_reach_every_segmentation_term():
    config = MirrorUNetConfig.from_preset(
        "autopet-v1", channels=SMALL, dice_weight=0.5, ce_weight=0.5, dice_reduction="batch"
    )
    model = MirrorUNetModel(config)
    x, labels = batch(config)
    out = model(x, labels=labels)
    expected = dice_ce_loss(out.branch_outputs["pet"], labels, dice_weight=0.5, ce_weight=0.5, reduction="batch")
    torch.testing.assert_close(out.loss_terms["pet/segmentation"], expected)


def test_one_mse_over_all_reconstructions():
    config = MirrorUNetConfig.from_preset(
        "autopet-v2", channels=SMALL, reconstruction_reduction="mean", lambda_rec=1e-3
    )
    model = MirrorUNetModel(config)
    x, labels = batch(config)
    out = model(x, labels=labels)
    outputs = torch.cat([out.branch_outputs["ct"], out.bottleneck_decoder_output], dim=1)
    one_mse = nn.functional.mse_loss(outputs, x)  # CT reconstruction, then PET: the input's channel order
    torch.testing.assert_close(out.loss, out.loss_terms["pet/segmentation"] + 1e-3 * one_mse)
    default = MirrorUNetModel(MirrorUNetConfig.from_preset("autopet-v2", channels=SMALL, lambda_rec=1e-3))
    t = default(x, labels=labels).loss_terms
    assert default.config.reconstruction_reduction == "sum"
    torch.testing.assert_close(
        default(x, labels=labels).loss,
        t["pet/segmentation"] + 1e-3 * (t["ct/reconstruction"] + t["bottleneck_decoder/reconstruction"]),
    )


def official_decision_fusion(**extra):
    return MirrorUNetConfig.from_preset(
        "autopet-decision-fusion",
        channels=SMALL,
        fusion_weights=[0.5, 0.5],
        learnable_fusion_weights=True,
        fusion_parametrisation="scalar",
        fusion_loss="fused",
        **extra,
    )


def test_decision_fusion_by_one_learnable_scalar_and_one_loss_on_the_fused_logits():
    model = MirrorUNetModel(official_decision_fusion())
    assert model.fusion_weights.tolist() == [0.5]
    ct, pet = torch.randn(1, 2, 2, 2, 2), torch.randn(1, 2, 2, 2, 2)
    with torch.no_grad():
        model.fusion_weights.fill_(0.3)
        torch.testing.assert_close(model.combine_final_logits({"ct": ct, "pet": pet}), 0.3 * ct + 0.7 * pet)
        model.fusion_weights.fill_(1.7)  # clamped to [0, 1], as the official code does
        torch.testing.assert_close(model.combine_final_logits({"ct": ct, "pet": pet}), ct)
        model.fusion_weights.fill_(0.5)
    x, labels = batch(model.config)
    out = model(x, labels=labels)
    torch.testing.assert_close(out.loss, out.loss_terms["final/segmentation"])
    out.loss.backward()
    assert model.fusion_weights.grad is not None and model.fusion_weights.grad.abs().item() > 0


def test_today_decision_fusion_trains_each_branch_and_two_normalised_weights():
    """Without the new fields: two weights normalised to sum to 1, each branch with its own loss plus the fused one."""
    config = MirrorUNetConfig.from_preset(
        "autopet-decision-fusion", channels=SMALL, fusion_weights=[0.5, 0.5], learnable_fusion_weights=True
    )
    model = MirrorUNetModel(config)
    assert model.fusion_weights.tolist() == [0.5, 0.5]
    x, labels = batch(config)
    t = model(x, labels=labels).loss_terms
    torch.testing.assert_close(
        model(x, labels=labels).loss, t["ct/segmentation"] + t["pet/segmentation"] + t["final/segmentation"]
    )


def test_study_level_lesion_target_reads_class_labels():
    config = MirrorUNetConfig.from_preset("autopet-v3", channels=SMALL, classification_target="study")
    model = MirrorUNetModel(config)
    x, _ = batch(config)
    labels = torch.zeros(2, SIDE, SIDE, SIDE, dtype=torch.long)  # no lesion in either patch
    out = model(x, labels=labels, class_labels=torch.tensor([2, 0]))  # a melanoma study and a negative one
    expected = nn.functional.binary_cross_entropy_with_logits(out.classification_logits[:, 0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(out.loss_terms["classification"], expected)
    unknown = model(x, labels=labels, class_labels=torch.tensor([-1, -1]))
    assert unknown.loss_terms["classification"].item() == 0.0
    assert "classification" not in model(x, labels=labels).loss_terms


def test_paper_presets_build_the_official_bottleneck_decoder_and_old_configs_the_light_one():
    official = MirrorUNetModel(MirrorUNetConfig.from_preset("autopet-v2", channels=SMALL))
    last = official.bottleneck_decoder.blocks[-1]
    assert type(last).__name__ == "MirrorUNetBottleneckDecoderBlock"
    assert isinstance(last.unit.conv[0][1], nn.BatchNorm3d) and isinstance(last.unit.conv[0][2], nn.PReLU)
    saved = MirrorUNetConfig.from_preset("autopet-v2").to_dict()
    del saved["bottleneck_decoder_style"]  # a config.json written before the field existed
    assert MirrorUNetConfig.from_dict(saved).bottleneck_decoder_style == "light"
    light_config = MirrorUNetConfig.from_preset("autopet-v2", channels=SMALL, bottleneck_decoder_style="light")
    light = MirrorUNetModel(light_config)
    assert len(light.bottleneck_decoder.blocks[-1]) == 1  # the transposed conv alone: raw output


def flatten_head_config(**extra):
    return MirrorUNetConfig.from_preset(
        "autopet-v3", classification_head={"branch": "pet", "task": "lesion_presence", "pooling": "flatten"}, **extra
    )


def test_flatten_head_is_the_official_one_and_fits_only_its_patch_size():
    with torch.device("meta"):
        head = MirrorUNetModel(flatten_head_config()).classification_head
    assert head.mlp[0].in_features == 216 and head.reduce[0].out_channels == 1
    model = MirrorUNetModel(flatten_head_config(channels=SMALL, patch_size=[32, 32, 32])).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 2, 32, 32, 32)).classification_logits.shape == (1, 1)
        with pytest.raises(ValueError, match=r"takes inputs of config.patch_size 32×32×32; got 64×32×32"):
            model(torch.rand(1, 2, 64, 32, 32))
        assert model(torch.rand(1, 2, 64, 32, 32), parts=["logits"]).logits.shape == (1, 2, 64, 32, 32)
