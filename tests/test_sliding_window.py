"""Sliding-window inference: tiling, blending, agreement with MONAI's reference implementation."""

import numpy as np
import pytest
import torch

from mirror_unet_hf import MirrorUNetConfig, MirrorUNetModel
from mirror_unet_hf.errors import UserInputError
from mirror_unet_hf.sliding_window import (
    SlidingWindowSettings,
    labels_from_logits,
    sliding_window_predict,
    window_starts,
)

SMALL = {"channels": [4, 8, 16, 32, 64], "norm": "instance"}


def small_model(preset="autopet-v3", **overrides):
    torch.manual_seed(0)
    return MirrorUNetModel(MirrorUNetConfig.from_preset(preset, **{**SMALL, **overrides})).eval()


def test_window_starts_cover_the_axis_and_end_flush():
    assert window_starts(100, 32, 0.25) == [0, 24, 48, 68]
    assert window_starts(32, 32, 0.25) == [0]
    assert window_starts(20, 32, 0.5) == [0]
    for size in range(33, 140):
        starts = window_starts(size, 32, 0.25)
        assert starts[-1] + 32 == size and all(b - a <= 24 for a, b in zip(starts, starts[1:]))


def test_a_single_window_equals_one_forward_pass():
    model = small_model()
    volume = torch.rand(2, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    result = sliding_window_predict(model, volume, SlidingWindowSettings(window=(32, 32, 32)), parts=("logits",))
    with torch.no_grad():
        expected = model(volume[None]).logits[0].numpy()
    assert result.num_windows == 1
    # float32 convolutions split over a different number of threads sum in another order: ~1e-6 apart
    np.testing.assert_allclose(result.logits, expected, rtol=1e-5, atol=1e-5)


def test_constant_blending_matches_monai_sliding_window_inference():
    inferers = pytest.importorskip("monai.inferers")
    model = small_model()
    volume = torch.rand(2, 45, 40, 37)
    ours = sliding_window_predict(
        model, volume, SlidingWindowSettings(window=(32, 32, 32), overlap=0.25, window_batch=3), parts=("logits",)
    )
    with torch.no_grad():
        reference = inferers.sliding_window_inference(
            volume[None], (32, 32, 32), 4, lambda x: model(x).logits, overlap=0.25, mode="constant"
        )[0].numpy()
    np.testing.assert_allclose(ours.logits, reference, rtol=1e-4, atol=1e-5)


def test_window_batch_does_not_change_the_result():
    model = small_model()
    volume = torch.rand(2, 40, 48, 36)
    a = sliding_window_predict(model, volume, SlidingWindowSettings(window=(32, 32, 32), window_batch=1))
    b = sliding_window_predict(model, volume, SlidingWindowSettings(window=(32, 32, 32), window_batch=4))
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-5)


def test_volumes_smaller_than_the_window_are_padded_and_cropped_back():
    model = small_model()
    result = sliding_window_predict(
        model,
        torch.rand(2, 20, 30, 17),
        SlidingWindowSettings(),
        parts=("logits", "branches", "bottleneck_decoder", "classification"),
    )
    assert result.logits.shape == (2, 20, 30, 17)
    assert result.branches["ct"].shape == (1, 20, 30, 17)
    assert result.bottleneck_decoder.shape == (1, 20, 30, 17)
    assert result.classification.shape == (1,) and 0.0 <= float(result.classification[0]) <= 1.0


def test_gaussian_blend_and_bf16_run_and_mostly_agree_with_fp32():
    model = small_model()
    volume = torch.rand(2, 48, 48, 48)
    fp32 = sliding_window_predict(model, volume, SlidingWindowSettings(window=(32, 32, 32)))
    bf16 = sliding_window_predict(model, volume, SlidingWindowSettings(window=(32, 32, 32), precision="bf16"))
    gauss = sliding_window_predict(model, volume, SlidingWindowSettings(window=(32, 32, 32), blend="gaussian"))
    agree = (labels_from_logits(model, fp32.logits) == labels_from_logits(model, bf16.logits)).mean()
    assert agree > 0.95
    assert np.isfinite(gauss.logits).all() and gauss.logits.shape == fp32.logits.shape


def test_labels_are_written_in_the_dataset_label_map():
    model = small_model("brats-v1")
    logits = np.zeros((3, 2, 1, 1), dtype=np.float32)
    logits[1, 0] = 5  # edema
    logits[2, 1] = 5  # tumour core → smallest label of {2, 3}
    assert labels_from_logits(model, logits).ravel().tolist() == [1, 2]


@pytest.mark.parametrize(
    "settings, message",
    [
        (SlidingWindowSettings(overlap=1.0), "overlap is 1.0"),
        (SlidingWindowSettings(window_batch=0), "window batch is 0"),
        (SlidingWindowSettings(precision="fp8"), "precision is 'fp8'; expected one of: fp32, bf16"),
        (SlidingWindowSettings(window=(30, 32, 32)), r"multiple of the network's total stride 16"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(UserInputError, match=message):
        sliding_window_predict(small_model(), torch.rand(2, 32, 32, 32), settings)


def test_wrong_channel_count_is_refused():
    with pytest.raises(UserInputError, match=r"volume has shape \(3, 32, 32, 32\); expected \(M, X, Y, Z\) with M = 2"):
        sliding_window_predict(small_model(), torch.rand(3, 32, 32, 32))
