"""MirrorUNetModel: every preset trains on a small volume, shapes, losses, sharing, bad inputs."""

import pytest
import torch
from torch import nn

from mirror_unet_hf import PRESETS, MirrorUNetConfig, MirrorUNetModel

SIDE = 32  # smallest volume the default 16× total stride allows with a 2³ bottleneck


def make_batch(config, batch=2, side=SIDE, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, len(config.modalities), side, side, side, generator=g)
    labels = torch.randint(0, len(config.label_names), (batch, side, side, side), generator=g)
    class_labels = None
    head = config.classification_head
    if head and head["task"] == "diagnosis":
        class_labels = torch.randint(0, len(head["class_names"]), (batch,), generator=g)
    return x, labels, class_labels


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_trains_forward_and_backward_with_finite_loss(name):
    torch.manual_seed(0)
    config = MirrorUNetConfig.from_preset(name)
    model = MirrorUNetModel(config)
    x, labels, class_labels = make_batch(config)
    out = model(x, labels=labels, class_labels=class_labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), "every parameter gets a finite gradient"
    k = len(config.final_label_groups) + 1
    assert out.logits.shape == (2, k, SIDE, SIDE, SIDE)
    for spec in config.branches:
        if spec["task"] == "none":
            assert spec["name"] not in out.branch_outputs
        else:
            expected = config.branch_out_channels(spec)
            assert out.branch_outputs[spec["name"]].shape == (2, expected, SIDE, SIDE, SIDE)
    assert (out.bottleneck_decoder_output is not None) == (config.bottleneck_decoder is not None)
    assert (out.classification_logits is not None) == (config.classification_head is not None)


def test_loss_is_the_lambda_weighted_sum_of_its_terms():
    config = MirrorUNetConfig.from_preset("autopet-v3", lambda_rec=0.3, lambda_cls=0.05)
    model = MirrorUNetModel(config)
    x, labels, _ = make_batch(config)
    out = model(x, labels=labels)
    t = out.loss_terms
    expected = (
        1.0 * t["pet/segmentation"]
        + 0.3 * (t["ct/reconstruction"] + t["bottleneck_decoder/reconstruction"])
        + 0.05 * t["classification"]
    )
    torch.testing.assert_close(out.loss, expected)


def test_reconstruction_target_is_the_input_modality():
    config = MirrorUNetConfig.from_preset("autopet-v1")
    model = MirrorUNetModel(config)
    x, labels, _ = make_batch(config)
    out = model(x, labels=labels)
    expected = ((out.branch_outputs["ct"][:, 0] - x[:, 0]) ** 2).mean()
    torch.testing.assert_close(out.loss_terms["ct/reconstruction"], expected)


def test_lesion_presence_target_comes_from_the_labels():
    config = MirrorUNetConfig.from_preset("autopet-v3")
    model = MirrorUNetModel(config)
    x, _, _ = make_batch(config)
    labels = torch.zeros(2, SIDE, SIDE, SIDE, dtype=torch.long)
    labels[1, 5, 5, 5] = 1
    out = model(x, labels=labels)
    expected = nn.functional.binary_cross_entropy_with_logits(out.classification_logits[:, 0], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(out.loss_terms["classification"], expected)


def test_brats_branch_targets_follow_the_label_map():
    from mirror_unet_hf.modeling_mirror_unet import class_targets

    labels = torch.tensor([[0, 1, 2, 3]])
    assert class_targets(labels, [[1]]).tolist() == [[0, 1, 0, 0]]  # edema
    assert class_targets(labels, [[2, 3]]).tolist() == [[0, 0, 1, 1]]  # tumour core
    assert class_targets(labels, [[1], [2], [3]]).tolist() == [[0, 1, 2, 3]]


def test_union_rule_is_foreground_where_any_branch_says_so():
    model = MirrorUNetModel(MirrorUNetConfig.from_preset("brats-v1"))
    g = torch.Generator().manual_seed(3)
    edema = torch.randn(1, 2, 4, 4, 4, generator=g) * 3
    core = torch.randn(1, 2, 4, 4, 4, generator=g) * 3
    final = model.combine_final_logits({"flair": edema, "t1gd": core}).argmax(1)
    expected_fg = (edema.argmax(1) == 1) | (core.argmax(1) == 1)
    assert torch.equal(final > 0, expected_fg)
    assert set(final.unique().tolist()) <= {0, 1, 2}


def test_decision_fusion_weights_average_the_logits():
    model = MirrorUNetModel(MirrorUNetConfig.from_preset("autopet-decision-fusion"))
    ct, pet = torch.randn(1, 2, 2, 2, 2), torch.randn(1, 2, 2, 2, 2)
    torch.testing.assert_close(model.combine_final_logits({"ct": ct, "pet": pet}), 0.1 * ct + 0.9 * pet)


def test_learnable_fusion_weights_start_at_the_config_and_train():
    config = MirrorUNetConfig.from_preset(
        "autopet-decision-fusion", fusion_weights=[0.5, 0.5], learnable_fusion_weights=True
    )
    model = MirrorUNetModel(config)
    assert model.fusion_weights.tolist() == [0.5, 0.5]
    x, labels, _ = make_batch(config)
    model(x, labels=labels).loss.backward()
    assert model.fusion_weights.grad is not None


def test_bottleneck_is_one_module_shared_by_the_branches():
    model = MirrorUNetModel(MirrorUNetConfig.from_preset("autopet-v1"))
    assert "bottleneck" in model.shared
    assert all("bottleneck" not in branch.own for branch in model.branches.values())
    late = MirrorUNetModel(MirrorUNetConfig.from_preset("autopet-late-fusion"))
    assert len(late.shared) == 0
    assert all("bottleneck" in branch.own for branch in late.branches.values())


def test_sharing_ablation_shares_the_named_levels_and_no_skips():
    config = MirrorUNetConfig.from_preset("autopet-v1", shared_layers=["encoder.3", "bottleneck", "decoder.0"])
    model = MirrorUNetModel(config)
    assert set(model.shared) == {"encoder_3", "bottleneck", "decoder_0"}
    for branch in model.branches.values():
        assert "encoder_3" not in branch.own and "decoder_0" not in branch.own and "encoder_2" in branch.own
    x, labels, _ = make_batch(config)
    model(x, labels=labels).loss.backward()


def test_branch_outputs_do_not_depend_on_the_other_modality_below_the_bottleneck():
    """Without sharing there is no path between branches: changing CT leaves the PET output unchanged."""
    model = MirrorUNetModel(MirrorUNetConfig.from_preset("autopet-late-fusion")).eval()
    x = torch.rand(1, 2, SIDE, SIDE, SIDE)
    y = x.clone()
    y[:, 0] = torch.rand(SIDE, SIDE, SIDE)
    with torch.no_grad():
        a, b = model(x).branch_outputs, model(y).branch_outputs
    assert torch.equal(a["pet"], b["pet"]) and not torch.equal(a["ct"], b["ct"])


def test_one_branch_is_a_plain_unet_and_four_branches_work():
    one = MirrorUNetModel(MirrorUNetConfig.from_preset("autopet-pet-only"))
    assert one(torch.rand(1, 1, SIDE, SIDE, SIDE)).logits.shape == (1, 2, SIDE, SIDE, SIDE)
    four = MirrorUNetModel(MirrorUNetConfig.from_preset("brats-4branch"))
    assert len(four.branches) == 4
    assert four(torch.rand(1, 4, SIDE, SIDE, SIDE)).logits.shape == (1, 4, SIDE, SIDE, SIDE)


def test_non_cubic_volumes_work_when_divisible_by_the_stride():
    model = MirrorUNetModel(MirrorUNetConfig.from_preset("autopet-v3")).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 2, 16, 32, 48))
    assert out.logits.shape == (1, 2, 16, 32, 48)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 2, 32, 32), r"rank 4\); expected \(B, M, D, H, W\) with M = 2 modalities \(ct, pet\)"),
        ((1, 3, 32, 32, 32), r"has 3 channels; expected 2, one per modality in order: ct, pet"),
        ((1, 2, 33, 32, 32), r"spatial shape \(33, 32, 32\) is not divisible by the network's total stride 16"),
    ],
)
def test_bad_pixel_values_raise_naming_the_shape(shape, message):
    model = MirrorUNetModel(MirrorUNetConfig.from_preset("autopet-v1"))
    with pytest.raises(ValueError, match=message):
        model(torch.rand(*shape))


def test_labels_outside_the_label_map_are_refused():
    model = MirrorUNetModel(MirrorUNetConfig.from_preset("autopet-v1"))
    labels = torch.zeros(1, SIDE, SIDE, SIDE, dtype=torch.long)
    labels[0, 0, 0, 0] = 3
    with pytest.raises(
        ValueError, match=r"labels contain value 3; the label map has values 0..1 \(background, lesion\)"
    ):
        model(torch.rand(1, 2, SIDE, SIDE, SIDE), labels=labels)
    with pytest.raises(ValueError, match="expected integer class indices"):
        model(torch.rand(1, 2, SIDE, SIDE, SIDE), labels=labels.float())


def test_diagnosis_labels_outside_the_classes_are_refused():
    model = MirrorUNetModel(MirrorUNetConfig.from_preset("autopet-v3-diagnosis"))
    labels = torch.zeros(1, SIDE, SIDE, SIDE, dtype=torch.long)
    with pytest.raises(
        ValueError, match=r"class_labels \[7\] must be in 0..3 \(negative, lymphoma, melanoma, lung_cancer\)"
    ):
        model(torch.rand(1, 2, SIDE, SIDE, SIDE), labels=labels, class_labels=torch.tensor([7]))


def test_unknown_diagnosis_is_left_out_of_the_loss():
    model = MirrorUNetModel(MirrorUNetConfig.from_preset("autopet-v3-diagnosis"))
    x = torch.rand(2, 2, SIDE, SIDE, SIDE)
    labels = torch.zeros(2, SIDE, SIDE, SIDE, dtype=torch.long)
    out = model(x, labels=labels, class_labels=torch.tensor([-1, -1]))
    assert out.loss_terms["classification"].item() == 0.0


def test_bf16_autocast_forward_and_backward():
    config = MirrorUNetConfig.from_preset("autopet-v3")
    model = MirrorUNetModel(config)
    x, labels, _ = make_batch(config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, labels=labels)
    assert out.logits.dtype == torch.bfloat16
    assert torch.isfinite(out.loss)
    out.loss.backward()
    bf16 = MirrorUNetModel(config).to(torch.bfloat16)
    assert torch.isfinite(bf16(x.bfloat16(), labels=labels).loss)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    config = MirrorUNetConfig.from_preset("autopet-v2", norm="instance")
    model = MirrorUNetModel(config)
    x, labels, _ = make_batch(config)
    model(x, labels=labels).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing
    model(x, labels=labels).loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], rtol=1e-4, atol=1e-6, msg=n)


def test_tuple_output_when_return_dict_is_false():
    model = MirrorUNetModel(MirrorUNetConfig.from_preset("autopet-v1")).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 2, SIDE, SIDE, SIDE), return_dict=False)
    assert isinstance(out, tuple) and out[0].shape == (1, 2, SIDE, SIDE, SIDE)


def test_logits_only_runs_just_the_final_mask_branch_and_gives_the_same_logits():
    model = MirrorUNetModel(MirrorUNetConfig.from_preset("autopet-v3")).eval()
    x = torch.rand(1, 2, SIDE, SIDE, SIDE)
    calls = []
    hook = model.branches["ct"].register_forward_pre_hook(lambda *a: calls.append("ct"))
    for level in model.branches["ct"].own.values():
        level.register_forward_hook(lambda *a: calls.append("ct-level"))
    with torch.no_grad():
        full = model(x)
        calls.clear()
        only = model(x, parts=["logits"])
    hook.remove()
    assert calls == [], "the CT branch must not run for the final mask of v3"
    assert torch.equal(full.logits, only.logits)
    assert only.bottleneck_decoder_output is None and only.classification_logits is None
    assert set(only.branch_outputs) == {"pet"}


def test_unknown_part_is_refused():
    model = MirrorUNetModel(MirrorUNetConfig.from_preset("autopet-v1"))
    with pytest.raises(ValueError, match=r"parts \['mask'\] are unknown; expected any of: logits, branches"):
        model(torch.rand(1, 2, SIDE, SIDE, SIDE), parts=["mask"])
