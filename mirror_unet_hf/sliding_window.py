"""Sliding-window inference of a Mirror U-Net over a whole preprocessed volume.

Windows are run in batches and their outputs blended into preallocated CPU buffers, so memory is
bounded by the output volume, never by the number of windows. Used by `predict`, by training-time
validation and by the demo (one implementation for all three).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import UserInputError

BLENDS = ("constant", "gaussian")
PRECISIONS = ("fp32", "bf16")


@dataclass
class SlidingWindowSettings:
    """How a volume is tiled and run.

    Attributes:
        window: window size in voxels (default: the model's `config.patch_size`, 96³ for the
            presets); shrunk per axis to the padded volume where the volume is smaller.
        overlap: fraction of a window shared with its neighbour (0.25, as the reference).
        window_batch: windows per forward pass.
        blend: `"constant"` (the reference's mean of overlapping windows) or `"gaussian"`.
        precision: `"fp32"` (exact) or `"bf16"` (autocast; faster on CPUs with AVX-512 bf16 and on GPUs).
        device: where the network runs (`"cpu"`, `"cuda"`, `"cuda:1"`...); outputs are blended on the CPU.
    """

    window: tuple[int, int, int] | None = None
    overlap: float = 0.25
    window_batch: int = 1
    blend: str = "constant"
    precision: str = "fp32"
    device: str = "cpu"

    def check(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise UserInputError(f"overlap is {self.overlap}; expected a fraction in [0, 1)")
        if self.window_batch < 1:
            raise UserInputError(f"window batch is {self.window_batch}; expected at least 1")
        if self.blend not in BLENDS:
            raise UserInputError(f"blend is {self.blend!r}; expected one of: {', '.join(BLENDS)}")
        if self.precision not in PRECISIONS:
            raise UserInputError(f"precision is {self.precision!r}; expected one of: {', '.join(PRECISIONS)}")
        if self.window is not None and (len(self.window) != 3 or min(self.window) < 1):
            raise UserInputError(f"window is {self.window}; expected three positive sizes in voxels")


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets along one axis: evenly stepped, the last window flush with the end."""
    if size <= window:
        return [0]
    step = max(1, int(window * (1.0 - overlap)))
    starts = list(range(0, size - window + 1, step))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def gaussian_weights(window: tuple[int, int, int], sigma_scale: float = 0.125) -> torch.Tensor:
    axes = []
    for w in window:
        x = torch.arange(w, dtype=torch.float32) - (w - 1) / 2.0
        axes.append(torch.exp(-0.5 * (x / (sigma_scale * w)) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return (weights / weights.max()).clamp_min(1e-3)


def effective_window(model, shape: tuple[int, int, int], settings: SlidingWindowSettings) -> tuple[int, ...]:
    """The window per axis: the requested one, not larger than the volume rounded up to the stride."""
    stride = model.config.total_stride
    window = tuple(settings.window or model.config.patch_size)
    for w in window:
        if w % stride:
            raise UserInputError(f"window {window} must be a multiple of the network's total stride {stride} on every axis")
    return tuple(min(w, math.ceil(s / stride) * stride) for w, s in zip(window, shape))


@dataclass
class SlidingWindowResult:
    """Blended outputs on the input volume's grid (float32, numpy).

    `logits` `(K, X, Y, Z)` final logits; `branches` name → `(C, X, Y, Z)`; `bottleneck_decoder`
    `(C, X, Y, Z)`; `classification`: lesion-presence probability (max over windows: a study holds a
    lesion when any window does) or diagnosis probabilities (mean over windows).
    """

    logits: np.ndarray | None
    branches: dict[str, np.ndarray]
    bottleneck_decoder: np.ndarray | None
    classification: np.ndarray | None
    num_windows: int


@torch.inference_mode()
def sliding_window_predict(
    model,
    volume: torch.Tensor | np.ndarray,
    settings: SlidingWindowSettings | None = None,
    parts: tuple[str, ...] = ("logits",),
    progress=None,
) -> SlidingWindowResult:
    """Run `model` over `volume` `(M, X, Y, Z)` (normalised, `config.modalities` order) window by window.

    `parts` selects the outputs, as `MirrorUNetModel.forward(parts=...)`. `progress`, if given, is
    called as `progress(done_windows, total_windows)`.
    """
    settings = settings or SlidingWindowSettings()
    settings.check()
    volume = torch.as_tensor(volume, dtype=torch.float32)
    if volume.ndim != 4 or volume.shape[0] != len(model.config.modalities):
        raise UserInputError(
            f"volume has shape {tuple(volume.shape)}; expected (M, X, Y, Z) with M = {len(model.config.modalities)} "
            f"({', '.join(model.config.modalities)})"
        )
    shape = tuple(volume.shape[1:])
    window = effective_window(model, shape, settings)
    padded = tuple(max(s, w) for s, w in zip(shape, window))
    if padded != shape:
        # pad at the far end with zeros (the normalised value of air / background)
        pad = [p for s, q in zip(reversed(shape), reversed(padded)) for p in (0, q - s)]
        volume = torch.nn.functional.pad(volume, pad)
    device = torch.device(settings.device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if settings.precision == "bf16"
        else contextlib.nullcontext()
    )
    weights = (gaussian_weights(window) if settings.blend == "gaussian" else torch.ones(window)).numpy()
    starts = list(itertools.product(*(window_starts(s, w, settings.overlap) for s, w in zip(padded, window))))

    buffers: dict[str, np.ndarray] = {}
    weight_sum = np.zeros(padded, dtype=np.float32)
    cls_values = []
    model_parts = list(parts)

    def accumulate(key, tensor, corner):
        data = tensor.float().cpu().numpy()
        if key not in buffers:
            buffers[key] = np.zeros((data.shape[0], *padded), dtype=np.float32)
        region = tuple(slice(c, c + w) for c, w in zip(corner, window))
        buffers[key][(slice(None), *region)] += data * weights

    for first in range(0, len(starts), settings.window_batch):
        corners = starts[first : first + settings.window_batch]
        batch = torch.stack(
            [volume[(slice(None), *(slice(c, c + w) for c, w in zip(corner, window)))] for corner in corners]
        ).to(device)
        with autocast:
            out = model(batch, parts=model_parts)
        for i, corner in enumerate(corners):
            if out.logits is not None:
                accumulate("logits", out.logits[i], corner)
            if "branches" in parts:
                for name, value in out.branch_outputs.items():
                    accumulate(f"branch/{name}", value[i], corner)
            if out.bottleneck_decoder_output is not None:
                accumulate("bottleneck_decoder", out.bottleneck_decoder_output[i], corner)
            weight_sum[tuple(slice(c, c + w) for c, w in zip(corner, window))] += weights
        if out.classification_logits is not None:
            cls_values.append(out.classification_logits.float().cpu())
        if progress is not None:
            progress(min(first + settings.window_batch, len(starts)), len(starts))

    crop = tuple(slice(0, s) for s in shape)
    weight_sum = weight_sum[crop]
    result = {key: value[(slice(None), *crop)] / weight_sum for key, value in buffers.items()}
    classification = None
    if cls_values:
        cls = torch.cat(cls_values)
        if model.config.classification_head["task"] == "lesion_presence":
            classification = cls.sigmoid().max(dim=0).values.numpy()
        else:
            classification = cls.softmax(dim=1).mean(dim=0).numpy()
    return SlidingWindowResult(
        logits=result.get("logits"),
        branches={k.split("/", 1)[1]: v for k, v in result.items() if k.startswith("branch/")},
        bottleneck_decoder=result.get("bottleneck_decoder"),
        classification=classification,
        num_windows=len(starts),
    )


def labels_from_logits(model, logits: np.ndarray) -> np.ndarray:
    """Final class per voxel written in the dataset's label map (`config.final_label_values`), uint8."""
    values = np.asarray(model.config.final_label_values, dtype=np.uint8)
    return values[np.argmax(logits, axis=0)]
