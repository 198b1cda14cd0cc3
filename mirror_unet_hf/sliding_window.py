"""Sliding-window inference of a Mirror U-Net over a whole preprocessed volume.

Windows are planned on a regular grid (`plan_windows`), run in batches, and their outputs blended on
the CPU by a `WindowMerger` (`mirror_unet_hf.window_merging`), so memory is bounded by the output
volume, never by the number of windows. Used by `predict`, by training-time validation and by the demo
(one implementation for all three).

How it runs (measured on a 2-core AVX-512-bf16 CPU, see `benchmarks/bench_inference.py`):

- `precision="auto"` (the default of `predict_study` / `mirror-unet predict`) picks bf16 where the hardware computes it natively (CPUs with
  AVX-512-bf16 or AMX, CUDA GPUs with bf16) and fp32 elsewhere. The bf16 path runs an inference copy
  of the model with BatchNorm folded into the convolutions (`fold_batch_norm`), channels-last-3d
  memory layout and bf16 autocast. `precision="fp32"` runs the model exactly as it is.
- On the CPU, windows are spread over `workers` threads that each run one window at a time with one
  intra-op thread. One window with all threads spends much of its time in thread synchronisation
  of small operations, and loses most of its speed as soon as another process wants a core.
- When only the label mask is wanted (`keep_logits=False`, as `predict_study` does) and the final
  output has two classes, only the foreground-minus-background logit is blended: its sign is the
  argmax of the blended logits, in half the memory and without the weight map.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .errors import UserInputError
from .window_merging import BLENDS, WindowGrid, WindowMerger

PRECISIONS = ("fp32", "bf16", "auto")


def fast_bf16_available(device: str | torch.device = "cpu") -> bool:
    """Whether `device` computes bf16 natively: a CUDA GPU that supports it, or a CPU with
    AVX-512-bf16 or AMX (through oneDNN). Elsewhere bf16 is emulated and slower than fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(check()) for check in checks if check is not None)
    except Exception:  # private helpers: treat any failure as "no"
        return False


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """`"auto"` → `"bf16"` where `fast_bf16_available(device)`, else `"fp32"`; others unchanged."""
    if precision == "auto":
        return "bf16" if fast_bf16_available(device) else "fp32"
    return precision


@dataclass
class SlidingWindowSettings:
    """How a volume is tiled and run.

    Attributes:
        window: window size in voxels (default: the model's `config.patch_size`, 96³ for the
            presets); shrunk per axis to the padded volume where the volume is smaller.
        overlap: fraction of a window shared with its neighbour (0.25, as the reference).
        window_batch: windows per forward pass (default: 2 for fp32 on a CPU, where PyTorch runs batch-1
            3D convolutions of small feature maps through a slow im2col kernel instead of oneDNN; 1 otherwise).
        blend: `"constant"` (the reference's mean of overlapping windows) or `"gaussian"`.
        precision: `"fp32"` (exact: the model as it is; the default here, so that library callers such
            as training-time validation get exact numbers), `"bf16"` (BatchNorm folded, channels-last,
            bf16 autocast) or `"auto"` (bf16 where the device computes it natively, else fp32; the
            default of `predict_study` and `mirror-unet predict`).
        device: where the network runs (`"cpu"`, `"cuda"`, `"cuda:1"`...); outputs are blended on the CPU.
        workers: CPU only: windows run in parallel, each worker with `threads // workers` intra-op
            threads (default: one worker per torch thread, at most 4). Ignored on a GPU (one stream).
    """

    window: tuple[int, int, int] | None = None
    overlap: float = 0.25
    window_batch: int | None = None
    blend: str = "constant"
    precision: str = "fp32"
    device: str = "cpu"
    workers: int | None = None

    def check(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise UserInputError(f"overlap is {self.overlap}; expected a fraction in [0, 1)")
        if self.window_batch is not None and (isinstance(self.window_batch, bool) or self.window_batch < 1):
            raise UserInputError(f"window batch is {self.window_batch}; expected at least 1")
        if self.blend not in BLENDS:
            raise UserInputError(f"blend is {self.blend!r}; expected one of: {', '.join(BLENDS)}")
        if self.precision not in PRECISIONS:
            raise UserInputError(f"precision is {self.precision!r}; expected one of: {', '.join(PRECISIONS)}")
        if self.window is not None and (len(self.window) != 3 or min(self.window) < 1):
            raise UserInputError(f"window is {self.window}; expected three positive sizes in voxels")
        if self.workers is not None and (
            isinstance(self.workers, bool) or int(self.workers) != self.workers or self.workers < 1
        ):
            raise UserInputError(f"workers is {self.workers!r}; expected a positive number of threads")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise UserInputError(f"device is {self.device!r}; expected cpu, cuda or cuda:N") from None


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets along one axis: evenly stepped, the last window flush with the end."""
    if size <= window:
        return [0]
    step = max(1, int(window * (1.0 - overlap)))
    starts = list(range(0, size - window + 1, step))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def effective_window(model, shape: tuple[int, int, int], settings: SlidingWindowSettings) -> tuple[int, ...]:
    """The window per axis: the requested one, not larger than the volume rounded up to the stride."""
    stride = model.config.total_stride
    window = tuple(settings.window or model.config.patch_size)
    for w in window:
        if w % stride:
            raise UserInputError(
                f"window {window} must be a multiple of the network's total stride {stride} on every axis"
            )
    return tuple(min(w, math.ceil(s / stride) * stride) for w, s in zip(window, shape))


def _model_device(model) -> torch.device | None:
    parameter = next(iter(model.parameters()), None)
    return None if parameter is None else parameter.device


def inference_model(model, precision: str, device: str | torch.device = "cpu"):
    """The network that sliding-window inference runs for a resolved `precision` (`"fp32"`/`"bf16"`).

    fp32: `model` itself, untouched (the exact path). bf16: a copy with BatchNorm folded into the
    convolutions (eval-mode models only; a model in training mode keeps its BatchNorm) in
    channels-last-3d layout on `device`; the caller's model is not changed.
    """
    device = torch.device(device)
    if precision != "bf16":
        return model
    from .modeling_mirror_unet import fold_batch_norm

    # The model's own module folds it: loaded as remote code, the model's classes come from another copy of
    # the modeling file than this module's (transformers loads each entry point of a folder separately), and
    # folding matches its blocks by class.
    fold_batch_norm = getattr(sys.modules.get(type(model).__module__), "fold_batch_norm", fold_batch_norm)
    if model.training:
        prepared = copy.deepcopy(model)
    else:
        prepared = fold_batch_norm(model)
    return prepared.to(device=device, memory_format=torch.channels_last_3d)


def _worker_layout(settings: SlidingWindowSettings, device: torch.device) -> tuple[int, int]:
    """(workers, intra-op threads per worker) for this run."""
    if device.type != "cpu":
        return 1, torch.get_num_threads()
    threads = torch.get_num_threads()
    workers = settings.workers if settings.workers is not None else min(threads, 4)
    return int(workers), max(1, threads // int(workers))


@dataclass
class SlidingWindowResult:
    """Blended outputs on the input volume's grid (float32, numpy).

    `logits` `(K, X, Y, Z)` final logits (None with `keep_logits=False`); `labels` `(X, Y, Z)` uint8
    final classes in the dataset's label map (`config.final_label_values`); `branches` name →
    `(C, X, Y, Z)`; `bottleneck_decoder` `(C, X, Y, Z)`; `classification`: lesion-presence probability
    (max over windows: a study holds a lesion when any window does) or diagnosis probabilities (mean
    over windows). `precision`, `workers` and `window_batch` say how it ran.
    """

    logits: np.ndarray | None
    branches: dict[str, np.ndarray]
    bottleneck_decoder: np.ndarray | None
    classification: np.ndarray | None
    num_windows: int
    labels: np.ndarray | None = None
    precision: str = "fp32"
    workers: int = 1
    window_batch: int = 1


def plan_windows(model, shape: tuple[int, int, int], settings: SlidingWindowSettings) -> WindowGrid:
    """Where the windows over a volume of `shape` lie: `effective_window` steps of `settings.overlap`
    on every axis (over the volume zero-padded to the window where it is smaller)."""
    window = effective_window(model, shape, settings)
    padded = tuple(max(s, w) for s, w in zip(shape, window))
    axis_starts = tuple(tuple(window_starts(s, w, settings.overlap)) for s, w in zip(padded, window))
    return WindowGrid(shape=tuple(shape), window=window, axis_starts=axis_starts)


def _checked_volume(model, volume: torch.Tensor | np.ndarray) -> torch.Tensor:
    volume = torch.as_tensor(volume, dtype=torch.float32)
    if volume.ndim != 4 or volume.shape[0] != len(model.config.modalities):
        raise UserInputError(
            f"volume has shape {tuple(volume.shape)}; expected (M, X, Y, Z) with M = {len(model.config.modalities)} "
            f"({', '.join(model.config.modalities)})"
        )
    return volume


def _checked_precision(model, settings: SlidingWindowSettings, device: torch.device) -> str:
    """The resolved precision, once the device is known to exist and to hold the model where fp32 runs it as it is."""
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"device {settings.device!r} asked for, but this torch build sees no CUDA GPU")
    on_device = _model_device(model)
    precision = resolve_precision(settings.precision, device)
    if (
        precision == "fp32"
        and on_device is not None
        and on_device != device
        and not (on_device.type == device.type == "cuda" and device.index is None)
    ):
        raise UserInputError(
            f"the model is on {on_device} but the device asked for is {device}; move it with model.to({str(device)!r})"
        )
    return precision


def _pad_to(volume: torch.Tensor, padded: tuple[int, ...]) -> torch.Tensor:
    shape = tuple(volume.shape[1:])
    if padded == shape:
        return volume
    # pad at the far end with zeros (the normalised value of air / background)
    pad = [p for s, q in zip(reversed(shape), reversed(padded)) for p in (0, q - s)]
    return torch.nn.functional.pad(volume, pad)


@dataclass
class _WindowRunner:
    """One forward pass over a batch of windows, giving float32 numpy outputs by name (runs in worker threads)."""

    net: torch.nn.Module
    volume: torch.Tensor
    grid: WindowGrid
    device: torch.device
    precision: str
    parts: tuple[str, ...]

    def __call__(self, corners: list[tuple[int, ...]]) -> dict[str, np.ndarray]:
        batch = torch.stack([self.volume[(slice(None), *self.grid.region(corner))] for corner in corners])
        bf16 = self.precision == "bf16"
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            batch = batch.to(self.device)
            if bf16:
                batch = batch.contiguous(memory_format=torch.channels_last_3d)
            out = self.net(batch, parts=list(self.parts))
            outputs = {}
            if out.logits is not None:
                outputs["logits"] = out.logits
            if "branches" in self.parts:
                for name, value in out.branch_outputs.items():
                    outputs[f"branch/{name}"] = value
            if out.bottleneck_decoder_output is not None:
                outputs["bottleneck_decoder"] = out.bottleneck_decoder_output
            if out.classification_logits is not None:
                outputs["classification"] = out.classification_logits
            return {key: value.float().contiguous().cpu().numpy() for key, value in outputs.items()}


def _run_batches(run, batches: list, consume, workers: int, intra_threads: int, set_threads: bool) -> None:
    """`consume(batch, run(batch))` for every batch, in order; with `workers > 1` the runs overlap in threads.

    `set_threads`: one worker sets torch's intra-op threads to `intra_threads` too. The process-wide
    thread count is restored afterwards (worker threads change the default for new threads).
    """
    previous_threads = torch.get_num_threads()
    try:
        if workers > 1:
            _run_in_pool(run, batches, consume, workers, intra_threads)
        else:
            if set_threads:
                torch.set_num_threads(intra_threads)
            for batch in batches:
                consume(batch, run(batch))
    finally:
        torch.set_num_threads(previous_threads)


def _run_in_pool(run, batches: list, consume, workers: int, intra_threads: int) -> None:
    """Keeps `2 * workers` batches in flight and consumes their results in submission order, so that
    the blended sums do not depend on timing."""
    pool = ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(intra_threads,))
    try:
        queue = iter(batches)
        pending = deque((batch, pool.submit(run, batch)) for batch in itertools.islice(queue, 2 * workers))
        while pending:
            batch, future = pending.popleft()
            outputs = future.result()
            following = next(queue, None)
            if following is not None:
                pending.append((following, pool.submit(run, following)))
            consume(batch, outputs)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _study_classification(model, window_logits: list[torch.Tensor]) -> np.ndarray | None:
    """Lesion presence: the most confident window (a study holds a lesion when any window does);
    a diagnosis: the mean of the windows' class probabilities."""
    if not window_logits:
        return None
    logits = torch.cat(window_logits)
    if model.config.classification_head["task"] == "lesion_presence":
        return logits.sigmoid().max(dim=0).values.numpy()
    return logits.softmax(dim=1).mean(dim=0).numpy()


def _labels(model, logits: np.ndarray, margin_only: bool) -> np.ndarray:
    """The label mask of blended final logits, or of a blended foreground-minus-background margin."""
    if not margin_only:
        return labels_from_logits(model, logits)
    values = np.asarray(model.config.final_label_values, dtype=np.uint8)
    return values[(logits[0] > 0).astype(np.intp)]


def _default_window_batch(settings: SlidingWindowSettings, precision: str, device: torch.device) -> int:
    return settings.window_batch or (2 if precision == "fp32" and device.type == "cpu" else 1)


def sliding_window_predict(
    model,
    volume: torch.Tensor | np.ndarray,
    settings: SlidingWindowSettings | None = None,
    parts: tuple[str, ...] = ("logits",),
    progress=None,
    keep_logits: bool = True,
) -> SlidingWindowResult:
    """Run `model` over `volume` `(M, X, Y, Z)` (normalised, `config.modalities` order) window by window.

    `parts` selects the outputs, as `MirrorUNetModel.forward(parts=...)`. `progress`, if given, is
    called as `progress(done_windows, total_windows)`. With `keep_logits=False` only the label mask
    of the final output is kept (`result.labels`; `result.logits` is None), which for two classes
    blends one channel instead of two.
    """
    settings = settings or SlidingWindowSettings()
    settings.check()
    volume = _checked_volume(model, volume)
    device = torch.device(settings.device)
    precision = _checked_precision(model, settings, device)
    grid = plan_windows(model, tuple(volume.shape[1:]), settings)
    volume = _pad_to(volume, grid.padded)
    margin_only = "logits" in parts and not keep_logits and len(model.config.final_label_values) == 2
    merger = WindowMerger(grid, settings.blend, sign_only=("logits",) if margin_only else ())
    run = _WindowRunner(inference_model(model, precision, device), volume, grid, device, precision, tuple(parts))
    workers, intra_threads = _worker_layout(settings, device)
    window_batch = _default_window_batch(settings, precision, device)
    corners = grid.corners
    batches = [corners[i : i + window_batch] for i in range(0, len(corners), window_batch)]
    classification_logits = []
    done = 0

    def consume(batch, outputs):
        nonlocal done
        if "classification" in outputs:
            classification_logits.append(torch.from_numpy(outputs.pop("classification")))
        for i, corner in enumerate(batch):
            merger.aggregate({key: value[i] for key, value in outputs.items()}, corner)
        done += len(batch)
        if progress is not None:
            progress(done, len(corners))

    set_threads = device.type == "cpu" and settings.workers is not None
    _run_batches(run, batches, consume, workers, intra_threads, set_threads)
    merged = merger.finalize()
    logits = merged.pop("logits", None)
    return SlidingWindowResult(
        logits=logits if keep_logits else None,
        branches={k.split("/", 1)[1]: v for k, v in merged.items() if k.startswith("branch/")},
        bottleneck_decoder=merged.get("bottleneck_decoder"),
        classification=_study_classification(model, classification_logits),
        num_windows=len(corners),
        labels=None if logits is None else _labels(model, logits, margin_only),
        precision=precision,
        workers=workers,
        window_batch=window_batch,
    )


def labels_from_logits(model, logits: np.ndarray) -> np.ndarray:
    """Final class per voxel written in the dataset's label map (`config.final_label_values`), uint8."""
    values = np.asarray(model.config.final_label_values, dtype=np.uint8)
    return values[np.argmax(logits, axis=0)]
