"""Augmentation of training patches, deterministic under a ``numpy.random.Generator``.

Two levels (``--augment`` of ``train/train.py``):

- ``"spatial"``: the authors' ``--with_DA`` — a rotation about each axis of up to ±30° (probability 0.2), a
  scaling of each axis by a factor in [0.7, 1.4] (probability 0.2) and a flip of each axis (probability 0.5).
  Rotation and scaling are one affine resampling (MONAI ``Affine``: images linear, labels nearest) of a block
  around the patch centre large enough that the patch is filled with real image wherever the volume reaches,
  not with padding; a patch without rotation or scaling is cut without interpolation.
- ``"spatial+intensity"``: the above, then nnU-Net's intensity augmentations on the image (MONAI transforms with
  nnU-Net's probabilities): Gaussian noise, Gaussian blur, brightness, contrast, simulated low resolution, gamma
  and inverted gamma.

Every draw comes from the generator the caller passes (the patch sampler derives one per (seed, epoch, study,
patch)), never from a global random state, so the same patches come out in every worker and after a resume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UserInputError

AUGMENTATIONS = ("none", "spatial", "spatial+intensity")

ROTATION_PROBABILITY = 0.2
MAX_ROTATION = math.pi / 6  # radians, about each axis
SCALING_PROBABILITY = 0.2
# The official call passes `scale_range=[-0.3, 0.4]`, which MONAI reads per axis (x ±0.3, y ±0.4, z unscaled);
# the range it names is applied to each axis here.
SCALE_RANGE = (0.7, 1.4)  # factor on the sampled extent: above 1 the anatomy appears smaller
FLIP_PROBABILITY = 0.5


def check_augmentation(name: str) -> str:
    """``name`` if it is one of ``AUGMENTATIONS``, else ``UserInputError``."""
    if name not in AUGMENTATIONS:
        raise UserInputError(f"augmentation {name!r}; expected one of {', '.join(AUGMENTATIONS)}")
    return name


@dataclass(frozen=True)
class SpatialDraw:
    """One patch's spatial augmentation: ``matrix`` maps output voxel offsets from the patch centre to input
    offsets (None: no rotation or scaling), ``flips`` says which axes are flipped afterwards."""

    matrix: np.ndarray | None
    flips: tuple[bool, bool, bool]


def rotation_matrix(angles: Sequence[float]) -> np.ndarray:
    """The 3×3 rotation by ``angles`` (radians) about axes 0, 1 and 2, applied in that order."""
    matrix = np.eye(3)
    for axis, angle in enumerate(angles):
        i, j = [a for a in range(3) if a != axis]
        turn = np.eye(3)
        turn[i, i] = turn[j, j] = math.cos(angle)
        turn[i, j], turn[j, i] = -math.sin(angle), math.sin(angle)
        matrix = turn @ matrix
    return matrix


def draw_spatial(rng: np.random.Generator) -> SpatialDraw:
    """The spatial augmentation of one patch; every draw is made whatever the outcome, so the number of values
    taken from ``rng`` is fixed."""
    rotate, scale = rng.random(2) < (ROTATION_PROBABILITY, SCALING_PROBABILITY)
    angles = rng.uniform(-MAX_ROTATION, MAX_ROTATION, size=3)
    factors = rng.uniform(*SCALE_RANGE, size=3)
    flips = tuple(bool(f) for f in rng.random(3) < FLIP_PROBABILITY)
    matrix = None
    if rotate or scale:
        matrix = (rotation_matrix(angles) if rotate else np.eye(3)) @ np.diag(factors if scale else np.ones(3))
    return SpatialDraw(matrix, flips)


def context_shape(patch_size: Sequence[int], draw: SpatialDraw) -> tuple[int, int, int]:
    """The block around the patch centre that the resampling reads: the extent of the transformed patch plus a
    voxel on each side for interpolation, with the parity of ``patch_size`` so that both share their centre."""
    if draw.matrix is None:
        return tuple(int(s) for s in patch_size)
    extent = np.abs(draw.matrix) @ (np.asarray(patch_size, dtype=float) - 1)
    shape = [math.ceil(e - 1e-9) + 3 for e in extent]
    return tuple(n + (n - s) % 2 for n, s in zip(shape, patch_size, strict=True))


def apply_spatial(block: np.ndarray, draw: SpatialDraw, patch_size: Sequence[int], mode: str) -> np.ndarray:
    """The patch of ``block`` (``(C, *context_shape)``, centred on the patch centre) under ``draw``: resampled
    with ``mode`` ("bilinear" for images, "nearest" for labels; outside the block 0), then flipped."""
    out = block
    if draw.matrix is not None:
        from monai.transforms import Affine  # MONAI (the train extra) is needed only when augmenting

        affine = np.eye(4)
        affine[:3, :3] = draw.matrix
        warp = Affine(affine=affine, spatial_size=tuple(patch_size), mode=mode, padding_mode="zeros", image_only=True)
        out = np.asarray(warp(np.ascontiguousarray(block, dtype=np.float32)))
        if mode == "nearest":
            out = np.rint(out).astype(block.dtype)
    axes = [axis + out.ndim - 3 for axis, flip in enumerate(draw.flips) if flip]
    return np.ascontiguousarray(np.flip(out, axis=axes) if axes else out)


def intensity_transforms():
    """nnU-Net's intensity augmentations as one MONAI ``Compose`` (seed it with ``set_random_state``)."""
    from monai.transforms import (
        Compose,
        RandAdjustContrast,
        RandGaussianNoise,
        RandGaussianSmooth,
        RandScaleIntensity,
        RandScaleIntensityFixedMean,
        RandSimulateLowResolution,
    )

    blur = (0.5, 1.0)
    return Compose(
        [
            RandGaussianNoise(prob=0.1, std=0.1),
            RandGaussianSmooth(sigma_x=blur, sigma_y=blur, sigma_z=blur, prob=0.2),
            RandScaleIntensity(factors=0.25, prob=0.15),  # brightness ×0.75…1.25
            RandScaleIntensityFixedMean(factors=0.25, prob=0.15, preserve_range=True),  # contrast
            RandSimulateLowResolution(prob=0.25, zoom_range=(0.5, 1.0)),
            RandAdjustContrast(gamma=(0.7, 1.5), prob=0.3, retain_stats=True),
            RandAdjustContrast(gamma=(0.7, 1.5), prob=0.1, retain_stats=True, invert_image=True),
        ]
    )


class PatchAugmenter:
    """Applies one of ``AUGMENTATIONS`` to patches cut by the caller: ``draw`` first, then ``context_shape``
    to know how large a block to cut around the centre, then ``image``/``label`` on those blocks."""

    def __init__(self, augmentation: str = "none"):
        self.augmentation = check_augmentation(augmentation)
        self._intensity = None

    @property
    def enabled(self) -> bool:
        return self.augmentation != "none"

    def draw(self, rng: np.random.Generator) -> tuple[SpatialDraw, int]:
        """The spatial draw of one patch and the seed of its intensity transforms."""
        return draw_spatial(rng), int(rng.integers(2**32, dtype=np.uint64))

    def image(self, block: np.ndarray, draw: SpatialDraw, seed: int, patch_size: Sequence[int]) -> np.ndarray:
        """The augmented image patch ``(M, *patch_size)`` float32 of a block ``(M, *context_shape)``."""
        patch = apply_spatial(block, draw, patch_size, "bilinear").astype(np.float32, copy=False)
        if self.augmentation != "spatial+intensity":
            return patch
        if self._intensity is None:  # built lazily: a dataset is pickled into each DataLoader worker
            self._intensity = intensity_transforms()
        self._intensity.set_random_state(seed=seed)
        return np.asarray(self._intensity(patch), dtype=np.float32)

    def label(self, block: np.ndarray, draw: SpatialDraw, patch_size: Sequence[int]) -> np.ndarray:
        """The label patch ``(*patch_size)`` of a block ``(*context_shape)``, nearest-neighbour resampled."""
        return apply_spatial(block[None], draw, patch_size, "nearest")[0]
