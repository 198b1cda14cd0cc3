"""Correctness of the inference speed-ups: BatchNorm folding, the bf16 default path, margin blending,
parallel CPU workers, precision resolution and the device flag. (Speed itself is measured by
`benchmarks/`, never here.)"""

import threading

import numpy as np
import pytest
import torch
from torch import nn

from mirror_unet_hf import MirrorUNetConfig, MirrorUNetModel
from mirror_unet_hf import sliding_window as sw
from mirror_unet_hf.errors import UserInputError
from mirror_unet_hf.modeling_mirror_unet import fold_batch_norm
from mirror_unet_hf.sliding_window import SlidingWindowSettings, labels_from_logits, sliding_window_predict

SMALL = {"channels": [4, 8, 16, 32, 64]}


def batchnorm_model(preset="autopet-v3", seed=0, **overrides):
    """A small BatchNorm model with non-trivial running statistics and affine parameters, in eval mode."""
    torch.manual_seed(seed)
    model = MirrorUNetModel(MirrorUNetConfig.from_preset(preset, **{**SMALL, **overrides}))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm3d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def test_folded_model_equals_the_unfolded_one_on_every_output():
    model = batchnorm_model()
    folded = fold_batch_norm(model)
    assert not any(isinstance(m, nn.BatchNorm3d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm3d) for m in model.modules()) > 0, "the original keeps its BatchNorm"
    x = torch.rand(2, 2, 32, 32, 32)
    with torch.no_grad():
        expected, got = model(x), folded(x)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-4, atol=1e-5)
    for name in expected.branch_outputs:  # the CT branch's decoder has transposed convolutions + BatchNorm
        torch.testing.assert_close(got.branch_outputs[name], expected.branch_outputs[name], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.bottleneck_decoder_output, expected.bottleneck_decoder_output, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.classification_logits, expected.classification_logits, rtol=1e-4, atol=1e-5)


def test_folding_leaves_instance_norm_models_alone_and_the_copy_cannot_be_saved(tmp_path):
    torch.manual_seed(0)
    model = MirrorUNetModel(MirrorUNetConfig.from_preset("autopet-v1", **SMALL, norm="instance")).eval()
    folded = fold_batch_norm(model)
    x = torch.rand(1, 2, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x).logits, model(x).logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="fold_batch_norm"):
        folded.save_pretrained(tmp_path / "folded")
    model.save_pretrained(tmp_path / "original")  # the original still saves


def test_margin_blending_gives_the_argmax_of_the_blended_logits():
    model = batchnorm_model()
    volume = torch.rand(2, 45, 40, 37)
    for blend in ("constant", "gaussian"):
        settings = SlidingWindowSettings(window=(32, 32, 32), blend=blend, precision="fp32")
        full = sliding_window_predict(model, volume, settings)
        margin = sliding_window_predict(model, volume, settings, keep_logits=False)
        assert margin.logits is None and margin.labels.dtype == np.uint8
        np.testing.assert_array_equal(full.labels, labels_from_logits(model, full.logits))
        np.testing.assert_array_equal(margin.labels, full.labels)


def test_more_than_two_classes_keep_the_argmax_of_all_logits():
    torch.manual_seed(0)
    model = MirrorUNetModel(MirrorUNetConfig.from_preset("brats-v2-rec", **SMALL, norm="instance")).eval()
    volume = torch.rand(len(model.config.modalities), 40, 36, 32)
    settings = SlidingWindowSettings(window=(32, 32, 32))
    full = sliding_window_predict(model, volume, settings)
    labels_only = sliding_window_predict(model, volume, settings, keep_logits=False)
    assert full.logits.shape[0] > 2
    np.testing.assert_array_equal(labels_only.labels, labels_from_logits(model, full.logits))


def test_cpu_workers_do_not_change_the_result_and_restore_the_thread_count():
    model = batchnorm_model()
    volume = torch.rand(2, 48, 40, 40)
    before = torch.get_num_threads()
    one = sliding_window_predict(model, volume, SlidingWindowSettings(window=(32, 32, 32), workers=1))
    two = sliding_window_predict(model, volume, SlidingWindowSettings(window=(32, 32, 32), workers=2, window_batch=2))
    assert two.workers == 2 and one.workers == 1
    np.testing.assert_allclose(two.logits, one.logits, rtol=1e-5, atol=1e-5)
    assert torch.get_num_threads() == before
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert seen == [before], "new threads get the process default back"


def test_bf16_path_matches_fp32_within_tolerance_and_leaves_the_model_unchanged():
    model = batchnorm_model(channels=[8, 16, 32, 64, 128])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    volume = torch.rand(2, 64, 64, 48)
    fp32 = sliding_window_predict(model, volume, SlidingWindowSettings(window=(32, 32, 32), precision="fp32"))
    bf16 = sliding_window_predict(model, volume, SlidingWindowSettings(window=(32, 32, 32), precision="bf16"))
    assert bf16.precision == "bf16" and fp32.precision == "fp32"
    assert (bf16.labels == fp32.labels).mean() >= 0.995
    scale = float(np.abs(fp32.logits).max())
    assert float(np.abs(bf16.logits - fp32.logits).max()) < 0.1 * scale
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    assert model.branches["pet"].own["encoder_0"].unit.conv[0][0].weight.is_contiguous()


def test_default_predict_path_agrees_with_fp32_on_a_phantom(tmp_path):
    from mirror_unet_hf.data.phantoms import make_phantoms
    from mirror_unet_hf.inference import predict_study, study_inputs

    root = make_phantoms("autopet", tmp_path / "phantoms", 1, seed=1, shape=(64, 64, 48))
    study = sorted(root.rglob("SUV.nii.gz"))[0].parent
    model = batchnorm_model(channels=[8, 16, 32, 64, 128], patch_size=[48, 48, 48])
    inputs = study_inputs(study, ["ct", "pet"])
    exact = predict_study(model, inputs, SlidingWindowSettings(precision="fp32"))
    default = predict_study(model, inputs)
    assert exact.run["precision"] == "fp32"
    assert default.run["precision"] == sw.resolve_precision("auto", "cpu")
    a, b = np.asanyarray(default.mask.dataobj), np.asanyarray(exact.mask.dataobj)
    assert a.shape == b.shape and a.dtype == np.uint8
    assert (a == b).mean() >= 0.995


def test_auto_precision_follows_the_hardware(monkeypatch):
    assert sw.resolve_precision("fp32") == "fp32" and sw.resolve_precision("bf16") == "bf16"
    monkeypatch.setattr(sw, "fast_bf16_available", lambda device="cpu": False)
    assert sw.resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(sw, "fast_bf16_available", lambda device="cpu": True)
    assert sw.resolve_precision("auto", "cpu") == "bf16"
    assert SlidingWindowSettings().precision == "fp32", "library default stays exact"


@pytest.mark.parametrize(
    "settings, message",
    [
        (SlidingWindowSettings(workers=0), "workers is 0"),
        (SlidingWindowSettings(device="gpu0"), "device is 'gpu0'"),
    ],
)
def test_bad_worker_and_device_settings_are_refused(settings, message):
    with pytest.raises(UserInputError, match=message):
        sliding_window_predict(batchnorm_model(), torch.rand(2, 32, 32, 32), settings)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_cuda_device_without_a_gpu_is_a_clear_error():
    with pytest.raises(UserInputError, match="sees no CUDA GPU"):
        sliding_window_predict(batchnorm_model(), torch.rand(2, 32, 32, 32), SlidingWindowSettings(device="cuda"))


def test_the_device_flag_places_the_network_and_its_inputs(monkeypatch):
    """The bf16 path moves its inference copy to `settings.device`, and every batch goes there too."""
    model = batchnorm_model()
    seen = {}
    original = sw.inference_model

    def spy(model, precision, device="cpu"):
        net = original(model, precision, device)
        seen["parameters"] = {p.device for p in net.parameters()}

        def hook(module, args, kwargs):
            seen.setdefault("inputs", set()).add(args[0].device)
            seen.setdefault("layouts", set()).add(args[0].is_contiguous(memory_format=torch.channels_last_3d))

        net.register_forward_pre_hook(hook, with_kwargs=True)
        return net

    monkeypatch.setattr(sw, "inference_model", spy)
    sliding_window_predict(
        model, torch.rand(2, 40, 32, 32), SlidingWindowSettings(window=(32, 32, 32), precision="bf16", device="cpu")
    )
    assert seen["parameters"] == {torch.device("cpu")} and seen["inputs"] == {torch.device("cpu")}
    assert seen["layouts"] == {True}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_device_runs_on_the_gpu_and_agrees_with_the_cpu():
    model = batchnorm_model(channels=[8, 16, 32, 64, 128])
    volume = torch.rand(2, 64, 64, 48)
    cpu = sliding_window_predict(model, volume, SlidingWindowSettings(window=(32, 32, 32), precision="fp32"))
    for precision in ("fp32", "bf16", "auto"):
        settings = SlidingWindowSettings(window=(32, 32, 32), precision=precision, device="cuda")
        if precision == "fp32":
            with pytest.raises(UserInputError, match="move it with model.to"):
                sliding_window_predict(model, volume, settings)
            gpu = sliding_window_predict(model.to("cuda"), volume, settings)
            model.to("cpu")
        else:
            gpu = sliding_window_predict(model, volume, settings)
        assert gpu.workers == 1
        assert (gpu.labels == cpu.labels).mean() >= 0.995, precision
    assert next(model.parameters()).device.type == "cpu"
