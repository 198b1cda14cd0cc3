"""`mirror-unet convert`: MONAI UNet and the authors' Mirror U-Net state dicts → checkpoints with equal outputs.

The source networks are built from MONAI blocks with random weights (tests/official_mirror_unet.py follows
the authors' structure), converted, saved with save_pretrained, loaded back and compared on one input.
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from official_mirror_unet import OfficialMirrorUNet, randomise
from safetensors.torch import save_file

from mirror_unet_hf import MirrorUNetModel
from mirror_unet_hf.cli import main
from mirror_unet_hf.convert import convert_state_dict, load_checkpoint
from mirror_unet_hf.errors import UserInputError

monai_nets = pytest.importorskip("monai.networks.nets")

CHANNELS = [4, 8, 16, 32, 64]
OVERRIDES = {"channels": CHANNELS, "patch_size": [32, 32, 32]}
SIDE = 32


def fixed_input() -> torch.Tensor:
    """Two samples, CT then PET (the presets' modality order)."""
    return torch.rand(2, 2, SIDE, SIDE, SIDE, generator=torch.Generator().manual_seed(1))


def monai_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    net = monai_nets.UNet(
        spatial_dims=3,
        in_channels=2,
        out_channels=2,
        channels=CHANNELS,
        strides=(2, 2, 2, 2),
        num_res_units=2,
        norm="batch",
    )
    return randomise(net)


def official(variant: str, th: float = 0.5) -> OfficialMirrorUNet:
    torch.manual_seed(0)
    net = randomise(OfficialMirrorUNet(variant, channels=CHANNELS, map_size=(SIDE // 16) ** 3))
    with torch.no_grad():
        net.learnable_th.fill_(th)
    return net


def convert_cli(tmp_path, source, checkpoint, preset, *extra) -> MirrorUNetModel:
    out = tmp_path / "converted"
    argv = [
        "convert",
        "--from",
        source,
        "--checkpoint",
        str(checkpoint),
        "--preset",
        preset,
        "--out",
        str(out),
        "--model-overrides",
        json.dumps(OVERRIDES),
        *extra,
    ]
    assert main(argv) == 0
    model, info = MirrorUNetModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def test_monai_unet_lightning_checkpoint_converts_to_early_fusion_with_equal_outputs(tmp_path):
    source = monai_unet()
    # Lightning: weights under "state_dict" with the LightningModule's attribute as prefix, beside other entries
    checkpoint = {
        "state_dict": {f"_model.{k}": v for k, v in source.state_dict().items()},
        "epoch": 777,
        "global_step": 64573,
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-3}]}],
    }
    torch.save(checkpoint, tmp_path / "baseline.ckpt")
    model = convert_cli(tmp_path, "monai-unet", tmp_path / "baseline.ckpt", "autopet-early-fusion")
    x = fixed_input()
    with torch.no_grad():
        expected = source(x[:, [1, 0]])  # the AutoPET baseline reads [PET, CT]
        got = model(x).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["plain", "net", "safetensors"])
def test_monai_unet_plain_nested_and_safetensors_files_load_alike(tmp_path, layout):
    source = monai_unet()
    state = source.state_dict()
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pt")
    if layout == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state if layout == "plain" else {"net": {f"net.{k}": v for k, v in state.items()}}, path)
    conversion = convert_state_dict(
        "monai-unet",
        load_checkpoint(path),
        "autopet-early-fusion",
        overrides=OVERRIDES,
        source_modalities=["ct", "pet"],
    )
    x = fixed_input()
    with torch.no_grad():
        torch.testing.assert_close(conversion.model.eval()(x).logits, source(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "variant, preset",
    [("transference", "autopet-v1"), ("fission", "autopet-v2"), ("fission_classification", "autopet-v3")],
)
def test_official_mirror_unet_converts_with_equal_outputs(tmp_path, variant, preset):
    source = official(variant)
    # ignite's ModelCheckpoint with to_save={"net": net, "opt": opt}, from a DataParallel-wrapped net
    optimizer = torch.optim.Adam(source.parameters())
    torch.save(
        {"net": {f"module.{k}": v for k, v in source.state_dict().items()}, "opt": optimizer.state_dict()},
        tmp_path / "net_best.pt",
    )
    model = convert_cli(tmp_path, "official-mirror-unet", tmp_path / "net_best.pt", preset)
    x = fixed_input()
    with torch.no_grad():
        expected, got = source(x), model(x)
    torch.testing.assert_close(got.branch_outputs["ct"], expected["ct"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.branch_outputs["pet"], expected["pet"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.logits, expected["pet"], rtol=1e-5, atol=1e-5)
    if "bottleneck_decoder" in expected:
        assert model.config.bottleneck_decoder_style == "official"
        torch.testing.assert_close(got.bottleneck_decoder_output, expected["bottleneck_decoder"], rtol=1e-5, atol=1e-5)
    if "classification" in expected:  # the authors' head ends in a sigmoid; ours emits the logit
        assert model.config.classification_head["pooling"] == "flatten"
        probability = got.classification_logits.sigmoid()
        torch.testing.assert_close(probability, expected["classification"], rtol=1e-5, atol=1e-5)


def test_without_the_concatenation_swap_the_outputs_differ():
    """The decoders' [deeper, skip] → [skip, deeper] permutation is what makes the outputs equal."""
    from mirror_unet_hf import convert as conversion_module

    source = official("transference")
    original = conversion_module.swap_decoder_concatenation
    conversion_module.swap_decoder_concatenation = lambda config, state: None
    try:
        model = convert_state_dict("official-mirror-unet", source.state_dict(), "autopet-v1", overrides=OVERRIDES).model
    finally:
        conversion_module.swap_decoder_concatenation = original
    x = fixed_input()
    with torch.no_grad():
        assert (model.eval()(x).logits - source(x)["pet"]).abs().max() > 1e-3


@pytest.mark.parametrize("fixed", [None, 0.1])
def test_official_decision_fusion_uses_the_learnt_or_the_given_ct_weight(fixed):
    source = official("decision_fusion", th=0.3)
    conversion = convert_state_dict(
        "official-mirror-unet", source.state_dict(), "autopet-decision-fusion", overrides=OVERRIDES, fusion_weight=fixed
    )
    model = conversion.model.eval()
    assert model.config.fusion_parametrisation == "scalar"
    x = fixed_input()
    with torch.no_grad():
        expected = source(x)
        got = model(x)
    torch.testing.assert_close(got.branch_outputs["ct"], expected["ct"], rtol=1e-5, atol=1e-5)
    if fixed is None:
        assert model.fusion_weights.tolist() == pytest.approx([0.3])
        torch.testing.assert_close(got.logits, expected["fused"], rtol=1e-5, atol=1e-5)
    else:
        assert model.fusion_weights is None and conversion.ignored == ["learnable_th"]
        torch.testing.assert_close(got.logits, 0.1 * expected["ct"] + 0.9 * expected["pet"], rtol=1e-5, atol=1e-5)


def test_missing_and_unexpected_keys_are_named():
    state = official("fission").state_dict()
    del state["dec.3.1.conv.unit0.conv.weight"]
    state["extra_head.weight"] = torch.zeros(3)
    with pytest.raises(UserInputError) as caught:
        convert_state_dict("official-mirror-unet", state, "autopet-v2", overrides=OVERRIDES)
    message = str(caught.value)
    assert "missing 1 weights of the model (bottleneck_decoder.blocks.3.unit.conv.0.0.weight)" in message
    assert "1 unexpected keys (extra_head.weight)" in message


def test_other_widths_are_named_with_their_shapes():
    with pytest.raises(
        UserInputError,
        match=r"shapes differ \(model\.0\.conv\.unit0\.conv\.weight \[4, 2, 3, 3, 3\] "
        r"where .* is \[16, 2, 3, 3, 3\]",
    ):
        convert_state_dict("monai-unet", monai_unet().state_dict(), "autopet-early-fusion")


def test_a_multi_branch_preset_is_refused_for_a_monai_unet():
    with pytest.raises(UserInputError, match="one-branch preset"):
        convert_state_dict("monai-unet", monai_unet().state_dict(), "autopet-v1", overrides=OVERRIDES)


def test_pickles_that_would_run_code_are_refused(tmp_path):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": monai_unet().state_dict(), "hparams": argparse.Namespace(lr=1e-3)}, path)
    with pytest.raises(UserInputError, match=r"holds Python objects that torch\.load\(weights_only=True\) refuses"):
        load_checkpoint(path)


def test_cli_refuses_a_non_empty_out_folder_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "w.pt"
    torch.save(monai_unet().state_dict(), path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = [
        "convert",
        "--from",
        "monai-unet",
        "--checkpoint",
        str(path),
        "--preset",
        "autopet-early-fusion",
        "--out",
        str(out),
        "--model-overrides",
        json.dumps(OVERRIDES),
    ]
    assert main(argv) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert main(argv + ["--overwrite"]) == 0
    assert {"config.json", "model.safetensors", "modeling_mirror_unet.py"} <= {p.name for p in out.iterdir()}
