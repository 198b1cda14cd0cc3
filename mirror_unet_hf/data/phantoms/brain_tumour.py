"""Brain MRI phantoms in the MSD Task01 BrainTumour layout (``Task01_BrainTumour/``).

BrainTumour phantoms (default 64 x 80 x 64 at 2 mm, 4D channel-last FLAIR/T1w/T1Gd/T2w): head with
scalp, skull ring, CSF, folded grey matter, white matter, lateral ventricles and falx, and a glioma:
necrotic core (label 2; dark on T1Gd, bright on T2), enhancing rim (label 3; bright on T1Gd) in 85 %
of cases, and edema (label 1; bright on FLAIR and T2), with bias field and noise. Real MSD images are
skull-stripped; these keep the skull so that foreground cropping has something to do.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from ...files import atomic_write_bytes
from ..nifti_io import encode_nifti
from .common import Space, phantom_nifti, smooth_noise

BRAIN_SPACING = (2.0, 2.0, 2.0)


def write_brain_tumour_phantoms(root: Path, n: int, seed: int, shape: tuple[int, int, int]) -> None:
    """``n`` cases into ``root`` (the ``Task01_BrainTumour`` folder): imagesTr/, labelsTr/ and dataset.json."""
    _write_brain_tumour(root, n, seed, shape)


# tissue -> (FLAIR, T1w, T1Gd, T2w), arbitrary MR units like the raw MSD images
_MR = {
    "scalp": (260.0, 700.0, 700.0, 380.0),
    "skull": (40.0, 60.0, 60.0, 50.0),
    "csf": (90.0, 160.0, 170.0, 1050.0),
    "grey": (430.0, 440.0, 460.0, 540.0),
    "white": (340.0, 620.0, 630.0, 330.0),
    "edema": (720.0, 390.0, 400.0, 800.0),
    "core": (520.0, 290.0, 270.0, 920.0),
    "enhancing": (560.0, 430.0, 1150.0, 620.0),
}


def _write_brain_tumour(root: Path, n: int, seed: int, shape: tuple[int, int, int]) -> None:
    training = []
    sx, sy, sz = BRAIN_SPACING
    affine = np.array(
        [
            [-sx, 0, 0, (shape[0] - 1) / 2 * sx],
            [0, sy, 0, -(shape[1] - 1) / 2 * sy],
            [0, 0, sz, -(shape[2] - 1) / 2 * sz],
            [0, 0, 0, 1],
        ],
        dtype=np.float64,
    )
    for case in range(n):
        rng = np.random.default_rng([seed, case])
        image, label = _render_brain(rng, shape)
        name = f"BRATS_{case + 1:03d}.nii.gz"
        for array, folder in ((image, "imagesTr"), (label, "labelsTr")):
            atomic_write_bytes(root / folder / name, encode_nifti(phantom_nifti(array, affine), compresslevel=6))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    description = {
        "name": "BRATS",
        "description": "Synthetic Mirror U-Net phantoms in the MSD Task01_BrainTumour layout",
        "reference": "mirror_unet_hf.data.phantoms",
        "licence": "Apache-2.0",
        "release": "phantom",
        "tensorImageSize": "4D",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": n,
        "numTest": 0,
        "training": training,
        "test": [],
    }
    atomic_write_bytes(root / "dataset.json", (json.dumps(description, indent=4) + "\n").encode())


def _rotated_ellipsoid(space: Space, centre, radii, angle):
    """Like ``Space.ellipsoid`` but turned by ``angle`` radians in the axial (X, Y) plane."""
    x, y = space.X - centre[0], space.Y - centre[1]
    u = np.cos(angle) * x + np.sin(angle) * y
    v = -np.sin(angle) * x + np.cos(angle) * y
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2 + ((space.Z - centre[2]) / radii[2]) ** 2


def _render_brain(rng, shape) -> tuple[np.ndarray, np.ndarray]:
    """The 4D MR image (FLAIR, T1w, T1Gd, T2w) and the label map of one case."""
    space = Space(shape, BRAIN_SPACING)
    half = np.array(shape, dtype=float) * np.array(BRAIN_SPACING) / 2
    radii = half * np.array([0.86, 0.88, 0.86]) * rng.uniform(0.92, 1.0, 3)
    centre = (0.0, 0.0, half[2] * rng.uniform(0.9, 1.05))  # Z runs from the FOV floor: the head sits slightly low
    d = np.sqrt(space.ellipsoid(centre, radii))

    def thickness(mm):
        return mm / float(radii.mean())  # a shell thickness in normalised radius

    head = d <= 1
    skull_outer = 1 - thickness(3.0)
    brain_edge = skull_outer - thickness(4.0)
    folding = smooth_noise(rng, shape, 1.0)
    # cortex 2-6 mm thick following the folding field; sulci are CSF clefts through it
    grey_edge = brain_edge - thickness(2.0) - thickness(10.0) * np.clip(0.5 + 0.5 * folding, 0.1, 1.0)
    tissue = _tissue_map(space, shape, d, head, radii, centre, folding, grey_edge, skull_outer, brain_edge, thickness)
    label = _tumour_labels(rng, space, shape, tissue, d, radii, centre, brain_edge)
    return _mr_channels(rng, shape, tissue, label, head), label


def _tissue_map(
    space, shape, d, head, radii, centre, folding, grey_edge, skull_outer, brain_edge, thickness
) -> np.ndarray:
    """0 air, 1 scalp, 2 skull, 3 CSF (with ventricles and falx), 4 grey matter, 5 white matter."""
    tissue = np.zeros(shape, dtype=np.int8)  # 0 air, 1 scalp, 2 skull, 3 csf, 4 grey, 5 white
    tissue[head] = 1
    tissue[d <= skull_outer] = 2
    tissue[d <= brain_edge] = 3
    tissue[d <= brain_edge - thickness(2.0)] = 4
    tissue[d <= grey_edge] = 5
    tissue[(folding > 0.75) & (tissue == 4) & (d > grey_edge + thickness(1.0))] = 3
    dx, dy, dz = radii
    cz = centre[2]
    # deep grey nuclei beside the ventricles
    nuclei = (
        np.minimum(
            space.ellipsoid((0.2 * dx, -0.02 * dy, cz + 0.02 * dz), (0.1 * dx, 0.14 * dy, 0.12 * dz)),
            space.ellipsoid((-0.2 * dx, -0.02 * dy, cz + 0.02 * dz), (0.1 * dx, 0.14 * dy, 0.12 * dz)),
        )
        <= 1
    )
    tissue[nuclei & (tissue == 5)] = 4
    # lateral ventricles: frontal horns splay outwards (rotated ellipsoids), bodies run back near the midline
    ventricles = np.zeros(shape, dtype=bool)
    for side in (1, -1):
        ventricles |= (
            _rotated_ellipsoid(
                space, (side * 0.12 * dx, 0.18 * dy, cz + 0.12 * dz), (0.06 * dx, 0.26 * dy, 0.14 * dz), side * 0.35
            )
            <= 1
        )
        ventricles |= (
            _rotated_ellipsoid(
                space, (side * 0.14 * dx, -0.22 * dy, cz + 0.14 * dz), (0.07 * dx, 0.24 * dy, 0.12 * dz), -side * 0.25
            )
            <= 1
        )
    ventricles |= space.ellipsoid((0.0, 0.0, cz - 0.02 * dz), (0.025 * dx, 0.16 * dy, 0.10 * dz)) <= 1
    falx = (np.abs(space.X) < 1.1) & (tissue >= 4) & (np.abs(space.Y) > 0.45 * dy)
    tissue[ventricles | falx] = 3
    return tissue


def _tumour_labels(rng, space, shape, tissue, d, radii, centre, brain_edge) -> np.ndarray:
    """The glioma: 1 edema, 2 core (necrotic / non-enhancing), 3 enhancing rim; irregular boundaries."""
    dx, dy, dz = radii
    cz = centre[2]
    side = 1 if rng.random() < 0.5 else -1
    t_centre = (side * rng.uniform(0.25, 0.45) * dx, rng.uniform(-0.45, 0.45) * dy, cz + rng.uniform(-0.1, 0.35) * dz)
    core_radius = rng.uniform(8.0, 16.0)
    distance = np.sqrt(space.ellipsoid(t_centre, (1.0, 1.0, 1.0)))
    wobble = smooth_noise(rng, shape, 3.0)
    core_d = distance / core_radius * (1 + 0.12 * wobble)
    edema_d = distance / (core_radius + rng.uniform(8.0, 22.0)) * (1 + 0.22 * wobble)
    parenchyma = (tissue == 4) | (tissue == 5)
    label = np.zeros(shape, dtype=np.uint8)
    label[(edema_d <= 1) & parenchyma] = 1
    tumour = (core_d <= 1) & (d <= brain_edge)
    label[tumour] = 2
    if rng.random() < 0.85:
        rim_mm = rng.uniform(2.0, 5.0)
        label[tumour & (core_d > 1 - rim_mm / core_radius)] = 3
    return label


def _mr_channels(rng, shape, tissue, label, head) -> np.ndarray:
    """MR intensities per tissue and label, blurred, with bias field, gain and noise; zero outside the head."""
    channels = np.zeros((*shape, 4), dtype=np.float32)
    names = ["scalp", "skull", "csf", "grey", "white"]
    for code, name in enumerate(names, start=1):
        channels[tissue == code] = _MR[name]
    for value, name in ((1, "edema"), (2, "core"), (3, "enhancing")):
        channels[label == value] = _MR[name]
    heterogeneity = 1 + 0.12 * smooth_noise(rng, shape, 1.0)
    channels[label == 2] *= heterogeneity[label == 2, None]
    channels = ndimage.gaussian_filter(channels, (0.6, 0.6, 0.6, 0))
    bias = 1 + 0.08 * smooth_noise(rng, shape, 10.0)
    gain = rng.uniform(0.8, 1.25, 4).astype(np.float32)
    noise = rng.standard_normal((*shape, 4), dtype=np.float32) * (0.025 * np.array(_MR["white"], dtype=np.float32))
    channels = (channels * bias[..., None] + noise) * gain
    channels[~head] = 0.0  # MR background is exactly zero, as in MSD
    return np.maximum(channels, 0).astype(np.float32)
