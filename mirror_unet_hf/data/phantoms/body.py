"""The body of the PET/CT phantoms, shared by every tracer: a patient's geometry and uptake levels
(``draw_anatomy``), the organ masks and distance maps (``body_parts``) and the tissues a study is painted with
(``study_regions``)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .common import Space, smooth_noise

AUTOPET_SPACING = (2.0, 2.0, 3.0)


def draw_anatomy(rng, shape) -> dict:
    """Per-patient body geometry (mm) and tracer uptake; organ positions are fractions of the trunk size."""
    nx, _, nz = shape
    sx, _, sz = AUTOPET_SPACING
    half_width = 0.5 * nx * sx
    A = half_width * rng.uniform(0.74, 0.86)  # trunk half-width
    B = A * rng.uniform(0.60, 0.72)  # trunk half-depth
    H = nz * sz

    def jitter():
        return rng.uniform(0.9, 1.1)  # one organ-size factor per call

    return {
        "shape": tuple(shape),
        "A": A,
        "B": B,
        "H": H,
        "fat": rng.uniform(0.05, 0.16),  # subcutaneous fat thickness / A
        "visceral": rng.uniform(-0.6, 0.6),  # visceral fat threshold (lower = more fat)
        "outline": [(rng.uniform(-0.03, 0.03), rng.uniform(0, 2 * np.pi)) for _ in range(3)],
        "liver": jitter(),
        "spleen": jitter(),
        "kidney": jitter(),
        "heart": jitter(),
        "lung": jitter(),
        "bladder": rng.uniform(0.7, 1.2),
        "suv_muscle": rng.uniform(0.6, 1.2),
        "suv_liver": rng.uniform(1.8, 2.6),
        "suv_brain": rng.uniform(6.0, 11.0),
        "suv_heart": rng.uniform(1.5, 12.0) if rng.random() < 0.6 else rng.uniform(1.5, 3.0),
        "suv_kidney": rng.uniform(2.5, 4.0),
        "suv_urine": rng.uniform(6.0, 25.0),
        "suv_bladder": rng.uniform(8.0, 40.0),
        "suv_stomach": rng.uniform(1.2, 3.5),
        "suv_tonsil": rng.uniform(2.0, 4.5),
        "organ_seed": int(rng.integers(2**31)),
    }


def body_parts(space: Space, a: dict) -> dict:
    """Boolean masks and distance maps of the anatomy (no randomness beyond the patient's organ seed)."""
    A, B, H = a["A"], a["B"], a["H"]
    X, Y, Z = space.X, space.Y, space.Z
    t = Z / H
    # trunk: elliptical section whose width follows a profile, flatter at the back, wobbly outline
    width = (
        np.interp(
            t, [0.0, 0.12, 0.3, 0.55, 0.66, 0.70, 0.725, 0.74], [0.93, 0.97, 0.88, 1.0, 1.02, 0.92, 0.68, 0.3]
        ).astype(np.float32)
        * A
    )
    depth = np.interp(t, [0.0, 0.3, 0.6, 0.72], [1.0, 0.95, 1.05, 0.8]).astype(np.float32) * B
    depth = np.where(Y < 0, depth * 0.93, depth)
    theta = np.arctan2(Y / depth, X / width)
    wobble = 1.0 + sum(c * np.cos((k + 2) * theta + phase) for k, (c, phase) in enumerate(a["outline"]))
    rho = np.sqrt((X / width) ** 2 + (Y / depth) ** 2) / wobble
    trunk = (rho <= 1.0) & (t <= 0.74)
    neck = (((X / (0.30 * A)) ** 2 + ((Y + 0.3 * B) / (0.34 * A)) ** 2) <= 1.0) & (t > 0.68) & (t < 0.82)
    head_d = space.ellipsoid((0.0, 0.08 * B, 0.885 * H), (0.48 * A, 0.58 * A, 0.11 * H))
    head = head_d <= 1.0
    body = trunk | neck | head
    organs = {
        "body": body,
        "trunk": trunk,
        "rho": np.where(trunk, rho, 2.0),
        "t": t,
        "head_d": head_d,
        "head": head,
    }
    organs.update(_viscera(space, a, t, rho))
    organs.update(_skeleton(space, a, t, rho))
    organs.update(_head_and_table(space, a))
    return organs


def _viscera(space: Space, a: dict, t: np.ndarray, rho: np.ndarray) -> dict:
    """Lungs, heart, abdominal organs, bladder and aorta."""
    A, B, H = a["A"], a["B"], a["H"]
    X, Y = space.X, space.Y
    organs = {}
    L = a["lung"]
    organs["lung_r"] = (
        space.ellipsoid((0.44 * A, -0.02 * B, 0.575 * H), (0.34 * A * L, 0.70 * B * L, 0.125 * H * L)) <= 1
    )
    organs["lung_l"] = (
        space.ellipsoid((-0.44 * A, -0.02 * B, 0.575 * H), (0.34 * A * L, 0.70 * B * L, 0.125 * H * L)) <= 1
    )
    organs["heart_d"] = space.ellipsoid(
        (-0.12 * A, 0.22 * B, 0.52 * H), (0.30 * A * a["heart"], 0.42 * B * a["heart"], 0.07 * H)
    )
    organs["liver"] = (
        space.ellipsoid((0.34 * A, 0.02 * B, 0.41 * H), (0.46 * A * a["liver"], 0.70 * B * a["liver"], 0.11 * H)) <= 1
    ) & (rho < 0.9)
    organs["spleen"] = (
        space.ellipsoid((-0.55 * A, -0.30 * B, 0.41 * H), (0.16 * A * a["spleen"], 0.28 * B * a["spleen"], 0.05 * H))
        <= 1
    )
    organs["stomach"] = space.ellipsoid((-0.30 * A, 0.30 * B, 0.43 * H), (0.22 * A, 0.28 * B, 0.045 * H)) <= 1
    k = a["kidney"]
    organs["kidney_d"] = np.minimum(
        space.ellipsoid((0.34 * A, -0.46 * B, 0.300 * H), (0.13 * A * k, 0.20 * B * k, 0.055 * H)),
        space.ellipsoid((-0.34 * A, -0.46 * B, 0.315 * H), (0.13 * A * k, 0.20 * B * k, 0.055 * H)),
    )
    organs["bladder"] = (
        space.ellipsoid((0.0, 0.30 * B, 0.075 * H), (0.26 * A * a["bladder"], 0.30 * B * a["bladder"], 0.045 * H)) <= 1
    )
    organs["aorta"] = (((X + 0.08 * A) ** 2 + (Y + 0.30 * B) ** 2) <= (0.07 * A) ** 2) & (t > 0.18) & (t < 0.62)
    return organs


def _skeleton(space: Space, a: dict, t: np.ndarray, rho: np.ndarray) -> dict:
    """Spine, ribs, sternum, pelvis and femoral heads."""
    A, B, H = a["A"], a["B"], a["H"]
    X, Y, Z = space.X, space.Y, space.Z
    organs = {}
    spine_y = np.interp(t, [0.0, 0.68, 0.76], [-0.64, -0.64, -0.45]).astype(np.float32) * B
    radius = 0.13 * A
    organs["vertebra_d"] = np.where((t > 0.03) & (t < 0.80), (X**2 + (Y - spine_y) ** 2) / radius**2, 9.0)
    organs["canal_d"] = np.where(
        (t > 0.03) & (t < 0.80), (X**2 + (Y - spine_y + 1.35 * radius) ** 2) / (0.45 * radius) ** 2, 9.0
    )
    organs["disc"] = np.mod(Z, 0.1 * H) < 0.02 * H
    thorax = (t > 0.44) & (t < 0.70)
    angle = np.abs(np.arctan2(X, -Y))  # 0 at the back, pi at the front
    organs["ribs"] = (
        thorax
        & (np.abs(rho - 0.85) < 0.035)
        & (np.sin(2 * np.pi * Z / (0.05 * H) + 4.0 * angle) > 0.55)
        & (angle < 2.75)
    )
    organs["sternum"] = thorax & (np.abs(X) < 0.06 * A) & (np.abs(rho - 0.86) < 0.05) & (Y > 0)
    iliac = np.minimum(
        space.ellipsoid((0.42 * A, -0.25 * B, 0.11 * H), (0.30 * A, 0.42 * B, 0.08 * H)),
        space.ellipsoid((-0.42 * A, -0.25 * B, 0.11 * H), (0.30 * A, 0.42 * B, 0.08 * H)),
    )
    # iliac wings: the upper, lateral and posterior part of an ellipsoid shell
    organs["pelvis"] = (iliac <= 1) & (iliac >= 0.78) & (np.abs(X) > 0.25 * A) & (Y < 0.1 * B) & (Z > 0.085 * H)
    organs["femur"] = (
        np.minimum(
            space.ellipsoid((0.52 * A, 0.0, 0.01 * H), (0.14 * A, 0.14 * A, 0.14 * A)),
            space.ellipsoid((-0.52 * A, 0.0, 0.01 * H), (0.14 * A, 0.14 * A, 0.14 * A)),
        )
        <= 1
    )
    return organs


def _head_and_table(space: Space, a: dict) -> dict:
    """Ventricles, tonsils, the table, and the per-patient organ textures (seeded by the patient)."""
    A, B, H = a["A"], a["B"], a["H"]
    X, Y = space.X, space.Y
    organs = {}
    organs["ventricles"] = (
        np.minimum(
            space.ellipsoid((0.06 * A, 0.10 * B, 0.895 * H), (0.045 * A, 0.2 * A, 0.025 * H)),
            space.ellipsoid((-0.06 * A, 0.10 * B, 0.895 * H), (0.045 * A, 0.2 * A, 0.025 * H)),
        )
        <= 1
    )
    organs["tonsils"] = (
        np.minimum(
            space.ellipsoid((0.14 * A, 0.0 * B, 0.80 * H), (5.0, 5.0, 5.0)),
            space.ellipsoid((-0.14 * A, 0.0 * B, 0.80 * H), (5.0, 5.0, 5.0)),
        )
        <= 1
    )
    organs["table"] = (np.abs(Y + 1.02 * B + 8.0) < 3.0) & (np.abs(X) < 0.95 * 0.5 * space.shape[0] * space.spacing[0])
    # organ texture / bowel pattern: fixed per patient so follow-ups share the anatomy
    texture_rng = np.random.default_rng(a["organ_seed"])
    organs["bowel"] = smooth_noise(texture_rng, space.shape, 2.0)
    organs["texture"] = smooth_noise(texture_rng, space.shape, 1.5)
    organs["vessels"] = smooth_noise(texture_rng, space.shape, 0.8)
    return organs


def study_regions(space: Space, o: dict, a: dict) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, mask)`` of every tissue the CT and each tracer's PET are painted with, in painting order (later
    ones win); made one at a time so a full-size phantom holds few masks at once."""
    t, rho = o["t"], o["rho"]
    abdomen = o["trunk"] & (t > 0.06) & (t < 0.44) & (rho < 0.85)
    yield "table", o["table"]
    yield "body", o["body"]
    yield "fat", o["trunk"] & (rho > 1.0 - a["fat"] * (1.3 - 0.6 * np.abs(t - 0.35)))
    yield "visceral_fat", abdomen & (o["bowel"] > 0.9 + a["visceral"])
    yield "bowel_gas", abdomen & (o["bowel"] < -2.0) & (space.Y > 0)
    yield "bowel_wall", abdomen & (np.abs(o["bowel"] + 0.3) < 0.12)
    for organ in ("liver", "spleen", "stomach"):
        yield organ, o[organ]
    yield "kidney", o["kidney_d"] <= 1
    yield "renal_pelvis", o["kidney_d"] <= 0.22
    yield "bladder", o["bladder"]
    yield "aorta", o["aorta"]
    yield "lungs", (o["lung_r"] | o["lung_l"]) & o["trunk"]
    heart = o["heart_d"] <= 1
    yield "heart", heart
    yield "myocardium", heart & (o["heart_d"] > 0.45)
    yield "bone", (o["vertebra_d"] <= 1) | o["ribs"] | o["sternum"] | o["pelvis"] | o["femur"]
    yield "cortex", ((o["vertebra_d"] > 0.7) & (o["vertebra_d"] <= 1)) | o["ribs"]
    yield "disc", (o["vertebra_d"] <= 1) & o["disc"]
    yield "canal", o["canal_d"] <= 1
    yield "posterior_elements", (o["canal_d"] > 1) & (o["canal_d"] <= 2.6) & (space.Y < 0)
    yield "skull", (o["head_d"] <= 0.84) & (o["head_d"] > 0.70)
    brain = o["head_d"] <= 0.70
    yield "brain", brain
    yield "ventricles", o["ventricles"] & brain
    yield "tonsils", o["tonsils"]
