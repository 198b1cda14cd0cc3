"""Blending the outputs of overlapping windows back into whole volumes (the merging half of sliding-window inference).

A `WindowGrid` says where the windows of one volume lie; a `WindowMerger` takes the network's outputs one
window at a time (`aggregate`) and, once every window is in, returns the blended volumes (`finalize`).
The idea is that of MONAI's `AvgMerger`; what this one adds:

- several named outputs per window (final logits, branch outputs...), all blended with one weight map;
- constant blending keeps no weight map: on a regular grid the number of windows over a voxel is the
  product of the per-axis counts, computed once at the end;
- a "sign-only" output (two-class logits when only the label mask is wanted) is blended as the
  foreground-minus-background margin, one channel instead of two, and is not divided by the weights:
  they are positive, so the sign of the weighted sum of margins is the argmax of the blended logits.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import reduce

import numpy as np
import torch

BLENDS = ("constant", "gaussian")


def gaussian_weights(window: tuple[int, ...], sigma_scale: float = 0.125) -> torch.Tensor:
    """Per-voxel weights of a 3-D window for gaussian blending: 1 at the centre, `sigma_scale * window`
    standard deviation per axis, floored at 1e-3 so that no voxel of a window counts for nothing."""
    axes = []
    for w in window:
        x = torch.arange(w, dtype=torch.float32) - (w - 1) / 2.0
        axes.append(torch.exp(-0.5 * (x / (sigma_scale * w)) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return (weights / weights.max()).clamp_min(1e-3)


@dataclass(frozen=True)
class WindowGrid:
    """The windows of one volume: every combination of the per-axis start offsets.

    Attributes:
        shape: the volume's size in voxels; the merged outputs are cropped to it.
        window: the window size in voxels. Where the volume is smaller than the window on an axis, the
            windows cover a zero-padded volume of `padded` size.
        axis_starts: per axis, the increasing start offsets: the first at 0, the last window ending at
            the padded size, no gap between neighbours (so that every voxel is covered).
    """

    shape: tuple[int, ...]
    window: tuple[int, ...]
    axis_starts: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if not len(self.shape) == len(self.window) == len(self.axis_starts):
            raise ValueError(
                f"window grid of shape {self.shape}, window {self.window} and {len(self.axis_starts)} start lists; "
                "expected one window size and one start list per axis"
            )
        for axis, (size, starts, w) in enumerate(zip(self.padded, self.axis_starts, self.window)):
            steps = list(itertools.pairwise(starts))
            if not starts or starts[0] != 0 or starts[-1] + w != size or any(not 0 < b - a <= w for a, b in steps):
                raise ValueError(
                    f"axis {axis}: window starts {list(starts)} do not tile {size} voxels with windows of {w}; "
                    f"expected increasing starts from 0, steps of at most {w}, and the last window ending at {size}"
                )

    @property
    def padded(self) -> tuple[int, ...]:
        """The size the windows cover: the volume's, or the window's where the volume is smaller."""
        return tuple(max(s, w) for s, w in zip(self.shape, self.window))

    @property
    def corners(self) -> list[tuple[int, ...]]:
        """Every window's first voxel, in running order (the last axis fastest)."""
        return list(itertools.product(*self.axis_starts))

    def region(self, corner: Sequence[int]) -> tuple[slice, ...]:
        """The voxels of the window whose first voxel is `corner`."""
        return tuple(slice(c, c + w) for c, w in zip(corner, self.window))

    def coverage(self) -> np.ndarray:
        """How many windows cover each voxel of `shape` (float32): the product of the per-axis counts."""
        counts = []
        for size, n, w, starts in zip(self.padded, self.shape, self.window, self.axis_starts):
            axis = np.zeros(size, dtype=np.float32)
            for s in starts:
                axis[s : s + w] += 1.0
            counts.append(axis[:n])
        ndim = len(counts)
        along_axes = [c.reshape([-1 if i == axis else 1 for i in range(ndim)]) for axis, c in enumerate(counts)]
        return reduce(np.multiply, along_axes)


class WindowMerger:
    """Blends the outputs of the windows of a `WindowGrid` into volumes.

    Args:
        grid: where the windows lie; every one of them must be merged before `finalize`.
        blend: `"constant"` (the mean of the overlapping windows) or `"gaussian"` (a mean weighted by
            `gaussian_weights`, which favours window centres).
        sign_only: names of two-class logit outputs of which only the argmax is wanted: they are blended
            as the margin `logits[1] - logits[0]` and returned unnormalised (see the module docstring).

    Sums are kept in float32 buffers of the padded volume's size, allocated when an output first
    arrives; the memory is bounded by the outputs, never by the number of windows.
    """

    def __init__(self, grid: WindowGrid, blend: str = "constant", sign_only: Collection[str] = ()):
        if blend not in BLENDS:
            raise ValueError(f"blend is {blend!r}; expected one of: {', '.join(BLENDS)}")
        self.grid = grid
        self.sign_only = frozenset(sign_only)
        self.weights = gaussian_weights(grid.window).numpy() if blend == "gaussian" else None
        self._sums: dict[str, np.ndarray] = {}
        self._weight_sum: np.ndarray | None = None  # gaussian: allocated once an output that is divided arrives
        self._merged: set[tuple[int, ...]] = set()
        self._finalized = False

    def aggregate(self, values: Mapping[str, np.ndarray], location: Sequence[int]) -> None:
        """Add one window's outputs.

        `values`: output name → float32 array `(C, *window)` (`(2, *window)` logits for a sign-only name);
        `location`: the window's first voxel, one of `grid.corners`, each merged once.
        """
        if self._finalized:
            raise ValueError("window outputs arrived after finalize(); expected them all before it")
        corner = self._checked_location(location)
        region = (slice(None), *self.grid.region(corner))
        for key, value in values.items():
            value = self._checked_value(key, value)
            if key not in self._sums:
                self._sums[key] = np.zeros((value.shape[0], *self.grid.padded), dtype=np.float32)
            target = self._sums[key][region]
            target += value * self.weights if self.weights is not None else value
        if self.weights is not None and any(key not in self.sign_only for key in values):
            if self._weight_sum is None:
                self._weight_sum = np.zeros(self.grid.padded, dtype=np.float32)
            self._weight_sum[region[1:]] += self.weights
        self._merged.add(corner)

    def finalize(self) -> dict[str, np.ndarray]:
        """The blended outputs on the volume's grid (cropped to `grid.shape`): name → float32 `(C, *shape)`.

        A sign-only name gives the weighted sum of its margins, one channel, positive where the second
        class wins. Raises when a window of the grid was never merged (its voxels would have no value).
        """
        if self._finalized:
            raise ValueError("finalize() was called twice; the blended outputs are returned once")
        corners = self.grid.corners
        missing = [corner for corner in corners if corner not in self._merged]
        if missing:
            raise ValueError(
                f"{len(missing)} of {len(corners)} windows were never merged (e.g. the one at {missing[0]}); "
                "expected every window of the grid before finalize()"
            )
        self._finalized = True
        crop = tuple(slice(0, s) for s in self.grid.shape)
        weight_sum = None
        merged = {}
        for key, total in self._sums.items():
            total = total[(slice(None), *crop)]
            if key in self.sign_only:
                merged[key] = total  # only its sign is used
                continue
            if weight_sum is None:
                weight_sum = self.grid.coverage() if self._weight_sum is None else self._weight_sum[crop]
            total /= weight_sum  # in place: the sums are not needed afterwards
            merged[key] = np.ascontiguousarray(total)
        self._sums = {}
        return merged

    def _checked_location(self, location: Sequence[int]) -> tuple[int, ...]:
        corner = tuple(int(c) for c in location)
        on_grid = len(corner) == len(self.grid.axis_starts) and all(
            c in starts for c, starts in zip(corner, self.grid.axis_starts)
        )
        if not on_grid:
            raise ValueError(
                f"window location {corner} is not on the grid; expected one start per axis from "
                f"{[list(starts) for starts in self.grid.axis_starts]}"
            )
        if corner in self._merged:
            raise ValueError(f"the window at {corner} was merged twice; expected each window once")
        return corner

    def _checked_value(self, key: str, value: np.ndarray) -> np.ndarray:
        """The array to add for output `key`: checked against the window, reduced to the margin if sign-only."""
        if value.ndim != len(self.grid.window) + 1 or tuple(value.shape[1:]) != tuple(self.grid.window):
            raise ValueError(
                f"output {key!r} of a window has shape {tuple(value.shape)}; "
                f"expected (channels, {', '.join(map(str, self.grid.window))})"
            )
        if key in self.sign_only:
            if value.shape[0] != 2:
                raise ValueError(
                    f"sign-only output {key!r} has {value.shape[0]} channels; expected 2 (two-class logits)"
                )
            value = (value[1] - value[0])[None]
        if key in self._sums and self._sums[key].shape[0] != value.shape[0]:
            raise ValueError(
                f"output {key!r} has {value.shape[0]} channels in this window "
                f"and {self._sums[key].shape[0]} in earlier ones"
            )
        return value
