"""Training patches from the prepared studies of a split (``load_prepared_dataset`` or ``load_mirror_dataset``).

``prepare_studies(hf_split, config)`` (``mirror_unet_hf.data.prepared``) preprocesses each study once into a
compact file; a patch is read from it by decoding only the blocks it covers: no NIfTI decompression during
training.

``MirrorPatchDataset`` draws training patches from it (MONAI ``RandCropByPosNegLabel`` semantics):
each volume is first cropped to its foreground box (non-zero PET, or any non-zero channel for MRI);
each patch centre is a foreground label voxel with probability pos/(pos+neg) (2:1 by default) and
otherwise any voxel of the cropped volume; patches reaching past the crop are padded with 0 (images and
labels). With ``augmentation`` (``mirror_unet_hf.data.augmentation``) each patch is then rotated, scaled,
flipped and, optionally, intensity-augmented. Which studies an epoch visits is ``study_order.StudyOrder``'s plan
(all, the lesion-positive ones, or equally many per group). The random streams depend only on ``(seed, epoch,
study index)`` (and the visit, for a study drawn twice in an epoch) and, for augmentation, the patch's index: the
same patches come out whatever the number of workers, and a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import datasets
import numpy as np
import torch

from ..errors import UserInputError
from .augmentation import PatchAugmenter, context_shape
from .prepared import prepare_studies
from .preprocessing import Box, PreprocessingConfig, crop_to_box
from .study_order import StudyOrder

# where a patch's class label comes from: the study's diagnosis index, or whether its label has foreground
CLASS_LABEL_SOURCES = ("diagnosis", "lesion_presence")

# a stream tag of each patch's augmentation: numpy's SeedSequence gives [a, b] and [a, b, 0] the same stream
AUGMENTATION_STREAM = 0xA06


def patch_shape(patch_size: int | Sequence[int]) -> tuple[int, int, int]:
    """``96`` or ``(96, 96, 64)`` -> a 3-tuple of positive ints, else ``UserInputError``."""
    size = (patch_size,) * 3 if isinstance(patch_size, (int, np.integer)) else tuple(patch_size)
    if len(size) != 3 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size):
        raise UserInputError(f"patch_size must be a positive int or three positive ints, got {patch_size!r}")
    return tuple(int(s) for s in size)


def sample_patch_centres(
    label: np.ndarray,
    num_patches: int,
    rng: np.random.Generator,
    pos_neg_ratio: tuple[float, float] = (2, 1),
    positives: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Patch centres ``(num_patches, 3)`` and a positive flag for each, deterministic given ``rng``.

    A centre is positive (a voxel with ``label > 0``) with probability ``pos / (pos + neg)``; the count is
    that fraction of ``num_patches`` rounded up or down at random so its mean is exact. Negative centres
    are uniform over the volume. Without foreground all centres are negative. ``positives`` may give the
    flat indices of the foreground to skip a scan of ``label``.
    """
    pos, neg = (float(v) for v in pos_neg_ratio)
    if pos < 0 or neg < 0 or pos + neg <= 0:
        raise UserInputError(f"pos_neg_ratio must be two non-negative numbers, not both zero, got {pos_neg_ratio!r}")
    if positives is None:
        positives = np.flatnonzero(label > 0)
    expected = num_patches * pos / (pos + neg)
    count = math.floor(expected) + int(rng.random() < expected - math.floor(expected))
    count = count if len(positives) else 0
    flags = np.zeros(num_patches, dtype=bool)
    flags[:count] = True
    flags = rng.permutation(flags)
    centres = np.empty((num_patches, 3), dtype=np.int64)
    if count:
        chosen = positives[rng.integers(0, len(positives), size=count)]
        centres[flags] = np.stack(np.unravel_index(chosen, label.shape), axis=1)
    others = num_patches - count
    if others:
        centres[~flags] = np.stack([rng.integers(0, n, size=others) for n in label.shape], axis=1)
    return centres, flags


def extract_patch(
    array: np.ndarray, centre: Sequence[int], patch_size: Sequence[int], pad_value: float = 0
) -> np.ndarray:
    """The ``patch_size`` block of the last three axes of ``array`` centred on ``centre`` (start = centre - size // 2).

    Parts outside the array are filled with ``pad_value``; leading (channel) axes are kept.
    """
    out = np.full((*array.shape[:-3], *patch_size), pad_value, dtype=array.dtype)
    source, target = [], []
    for c, size, n in zip(centre, patch_size, array.shape[-3:]):
        start = int(c) - size // 2
        low, high = max(start, 0), min(start + size, n)
        if high <= low:
            return out
        source.append(slice(low, high))
        target.append(slice(low - start, high - start))
    out[(Ellipsis, *target)] = array[(Ellipsis, *source)]
    return out


def sample_patches(
    image: np.ndarray,
    label: np.ndarray,
    patch_size: int | Sequence[int],
    num_patches: int,
    rng: np.random.Generator,
    pos_neg_ratio: tuple[float, float] = (2, 1),
    box: Box | None = None,
    positives: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``num_patches`` patches of ``image`` ``(M, X, Y, Z)`` and ``label`` ``(X, Y, Z)`` inside ``box`` (whole volume
    when None).

    Returns images ``(N, M, *patch)``, labels ``(N, *patch)`` and the positive flags ``(N,)``.
    ``positives``: flat foreground indices within the box-cropped label, if already known.
    """
    size = patch_shape(patch_size)
    if box is not None:
        image, label = crop_to_box(image, box), crop_to_box(label, box)
    centres, flags = sample_patch_centres(label, num_patches, rng, pos_neg_ratio, positives)
    images = np.stack([extract_patch(image, c, size, 0) for c in centres])
    labels = np.stack([extract_patch(label, c, size, 0) for c in centres])
    return images, labels, flags


def augmented_patches(
    image: np.ndarray,
    label: np.ndarray,
    centres: np.ndarray,
    patch_size: Sequence[int],
    augmenter: PatchAugmenter,
    rngs: Sequence[np.random.Generator],
) -> tuple[np.ndarray, np.ndarray]:
    """The patches of ``image`` ``(M, X, Y, Z)`` and ``label`` ``(X, Y, Z)`` at ``centres``, each augmented with
    its own generator of ``rngs``: a block large enough for the patch's rotation and scaling is cut around the
    centre (0 outside the volume) and resampled to ``patch_size``. Returns images ``(N, M, *patch)`` and
    labels ``(N, *patch)``."""
    images, labels = [], []
    for centre, rng in zip(centres, rngs, strict=True):
        draw, seed = augmenter.draw(rng)
        block = context_shape(patch_size, draw)
        images.append(augmenter.image(extract_patch(image, centre, block, 0), draw, seed, patch_size))
        labels.append(augmenter.label(extract_patch(label, centre, block, 0), draw, patch_size))
    return np.stack(images), np.stack(labels)


class MirrorPatchDataset(torch.utils.data.IterableDataset):
    """Training patches for Mirror U-Net, ``patches_per_volume`` per study visited in an epoch.

    Each item: ``{"pixel_values": float32 (M, *patch), "labels": int64 (*patch), "class_labels": int64
    scalar, "case_id": str}``, channels in ``config.modalities`` order. ``class_labels``: ``"diagnosis"`` gives
    the index in DIAGNOSIS_NAMES (-1 when unknown or not AutoPET), ``"lesion_presence"`` 1 for a study whose
    label has foreground and 0 otherwise (the study-level target of ``classification_target="study"``, from the
    labels alone). Studies are visited in the order of ``study_order.StudyOrder``, which depends on
    ``(seed, epoch)`` (call ``set_epoch`` each epoch): all of them shuffled, only the lesion-positive ones
    (``positives_only``), or equally many of each group (``groups``: a group name per row, e.g. the tracer).
    The patches of one study come out together, so a ``DataLoader`` batch of ``patches_per_volume`` patches
    holds one study's patches (whatever the workers: each worker takes every n-th study of the order).
    ``len()`` is the number of patches per epoch, from the studies actually visited. ``augmentation``: one of
    ``augmentation.AUGMENTATIONS``; each patch's draws come from a generator of ``(seed, epoch, study, patch)``.
    ``clip_intensities=False`` scales the intensity windows without clipping (the authors' training patches).
    """

    def __init__(
        self,
        hf_split: datasets.Dataset,
        config: Any,
        patch_size: int | Sequence[int],
        patches_per_volume: int = 4,
        pos_neg_ratio: tuple[float, float] = (2, 1),
        seed: int = 0,
        augmentation: str = "none",
        *,
        positives_only: bool = False,
        groups: Sequence[str | None] | None = None,
        class_labels: str = "diagnosis",
        clip_intensities: bool = True,
    ):
        super().__init__()
        if class_labels not in CLASS_LABEL_SOURCES:
            raise UserInputError(f"class_labels {class_labels!r}; expected one of {', '.join(CLASS_LABEL_SOURCES)}")
        self.patch_size = patch_shape(patch_size)
        if (
            isinstance(patches_per_volume, bool)
            or not isinstance(patches_per_volume, (int, np.integer))
            or patches_per_volume < 1
        ):
            raise UserInputError(f"patches_per_volume must be a positive integer, got {patches_per_volume!r}")
        pos, neg = (float(v) for v in pos_neg_ratio)
        if pos < 0 or neg < 0 or pos + neg <= 0:
            raise UserInputError(
                f"pos_neg_ratio must be two non-negative numbers, not both zero, got {pos_neg_ratio!r}"
            )
        self.patches_per_volume = int(patches_per_volume)
        self.pos_neg_ratio = (pos, neg)
        self.seed = int(seed)
        self.epoch = 0
        self.augmenter = PatchAugmenter(augmentation)
        preprocessing = config if clip_intensities else PreprocessingConfig.of(config, clip_intensities=False)
        self.studies = prepare_studies(hf_split, preprocessing)
        self.class_labels = class_labels
        wanted = positives_only or class_labels == "lesion_presence"
        self.lesion_positive = self.studies.has_foreground() if wanted else None
        self.order = StudyOrder(len(self.studies), self.lesion_positive, positives_only, groups)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.order) * self.patches_per_volume

    def study_patches(self, index: int, repeat: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
        """The images ``(N, M, *patch)`` and labels ``(N, *patch)`` of study ``index`` in this epoch (``repeat``: its
        visits earlier in the epoch, each drawing other patches), and the study's arrays (class label, case id)."""
        arrays = self.studies.training_arrays(int(index))
        visit = [int(repeat)] if repeat else []  # [..., 0] would be the stream of [...]: first visits keep theirs
        rng = np.random.default_rng([self.seed, self.epoch, int(index), *visit])
        if not self.augmenter.enabled:
            images, labels, _ = sample_patches(
                arrays["image"],
                arrays["label"],
                self.patch_size,
                self.patches_per_volume,
                rng,
                self.pos_neg_ratio,
                positives=arrays["positives"],
            )
            return images, labels, arrays
        centres, _ = sample_patch_centres(
            arrays["label"], self.patches_per_volume, rng, self.pos_neg_ratio, arrays["positives"]
        )
        rngs = [
            np.random.default_rng([self.seed, self.epoch, int(index), patch, AUGMENTATION_STREAM, *visit])
            for patch in range(self.patches_per_volume)
        ]
        images, labels = augmented_patches(
            arrays["image"], arrays["label"], centres, self.patch_size, self.augmenter, rngs
        )
        return images, labels, arrays

    def __iter__(self) -> Iterator[dict]:
        worker = torch.utils.data.get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for visit in self.order.epoch(self.seed, self.epoch)[worker_id::workers]:
            images, labels, arrays = self.study_patches(visit.study, visit.repeat)
            class_label = arrays["class_label"]
            if self.class_labels == "lesion_presence":
                class_label = int(self.lesion_positive[visit.study])
            for image, label in zip(images, labels, strict=True):
                yield {
                    "pixel_values": torch.from_numpy(image),
                    "labels": torch.from_numpy(label.astype(np.int64)),
                    "class_labels": torch.tensor(class_label, dtype=torch.int64),
                    "case_id": arrays["case_id"],
                }
