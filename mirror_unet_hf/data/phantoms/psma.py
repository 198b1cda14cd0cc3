"""PSMA PET/CT phantoms: the FDG phantom's body (``phantoms/autopet.py``) with PSMA ligand uptake and prostate cancer.

Physiological uptake (SUV, per patient, +-15 % per study): salivary glands (parotid and submandibular) 10-25,
lacrimal glands 4-12, kidneys 15-45 with urine in the renal pelvis (10-40) and bladder (5-50), liver 4-8,
spleen 4-9, small bowel 3-10, the normal prostate 1.5-4, muscle 0.4-0.8, a low blood pool and myocardium, and
little in the brain (0.1-0.3), unlike FDG. Lesions (about three patients in four, SUV 5-40, one in five
subtle): the prostate bed (primary or local recurrence behind the bladder base), lymph nodes (iliac and
para-aortic, sometimes inguinal, mediastinal or cervical) and bone (vertebrae, pelvis, ribs, femora; sclerotic
on CT). Follow-up studies evolve the lesions as the FDG ones do.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .autopet import (
    AUTOPET_SPACING,
    NODE_STATIONS,
    body_parts,
    draw_anatomy,
    follow_up_lesions,
    make_lesion,
    site_point,
)
from .common import Space

PSMA_NEGATIVE_FRACTION = 0.25
# lymph-node stations of prostate cancer, by how often a node is drawn there
_PSMA_NODE_STATIONS = ("iliac", "iliac", "iliac", "para_aortic", "para_aortic", "inguinal", "mediastinal", "cervical")


def draw_psma_anatomy(rng, shape) -> dict:
    """A patient's body (``draw_anatomy``) with PSMA uptake levels in place of FDG's."""
    anatomy = draw_anatomy(rng, shape)
    anatomy.update(
        {
            "suv_muscle": rng.uniform(0.4, 0.8),
            "suv_liver": rng.uniform(4.0, 8.0),
            "suv_spleen": rng.uniform(4.0, 9.0),
            "suv_kidney": rng.uniform(15.0, 45.0),
            "suv_urine": rng.uniform(10.0, 40.0),
            "suv_bladder": rng.uniform(5.0, 50.0),
            "suv_bowel": rng.uniform(3.0, 10.0),
            "suv_salivary": rng.uniform(10.0, 25.0),
            "suv_lacrimal": rng.uniform(4.0, 12.0),
            "suv_prostate": rng.uniform(1.5, 4.0),
            "suv_brain": rng.uniform(0.1, 0.3),
            "suv_stomach": rng.uniform(1.0, 2.5),
            "suv_tonsil": rng.uniform(1.5, 3.0),
        }
    )
    return anatomy


def psma_sites(space: Space, a: dict) -> dict[str, np.ndarray]:
    """Ellipsoid distances (<= 1 inside) of the organs PSMA shows and FDG's body lacks: salivary and lacrimal
    glands (mirrored left/right) and the prostate below the bladder."""
    A, B, H = a["A"], a["B"], a["H"]

    def pair(centre, radii):
        x, y, z = centre
        return np.minimum(space.ellipsoid((x, y, z), radii), space.ellipsoid((-x, y, z), radii))

    return {
        "parotid": pair((0.34 * A, 0.0, 0.82 * H), (0.09 * A, 0.12 * A, 0.045 * H)),
        "submandibular": pair((0.20 * A, 0.14 * B, 0.79 * H), (0.07 * A, 0.08 * A, 0.03 * H)),
        "lacrimal": pair((0.24 * A, 0.08 * B + 0.44 * A, 0.905 * H), (0.05 * A, 0.05 * A, 0.02 * H)),
        "prostate": space.ellipsoid((0.0, 0.02 * B, 0.045 * H), (0.11 * A, 0.10 * A, 0.035 * H)),
    }


def psma_regions(space: Space, o: dict, a: dict) -> Iterator[tuple[str, np.ndarray]]:
    """The PSMA-avid organs of ``psma_sites`` in the body and outside the brain, painted after the shared tissues
    in the PET only (the simple head's skull runs where the glands lie below it in a patient)."""
    outside_brain = o["body"] & (o["head_d"] > 0.70)
    for name, distance in psma_sites(space, a).items():
        yield name, (distance <= 1) & outside_brain


def psma_uptake(rng, o: dict, a: dict) -> dict[str, object]:
    """PSMA's SUV of each tissue of ``study_regions`` and ``psma_regions`` (a number or a function making an
    array); each organ varies by +-15 % from study to study."""

    def study_uptake():
        return rng.uniform(0.85, 1.15)

    texture = o["texture"]
    muscle = a["suv_muscle"] * study_uptake()
    liver = a["suv_liver"] * study_uptake()
    salivary = a["suv_salivary"] * study_uptake()
    return {
        "table": 0.0,
        "body": lambda: muscle * (1 + 0.08 * texture),
        "fat": 0.2,
        "visceral_fat": 0.25,
        "bowel_gas": 0.0,
        "bowel_wall": a["suv_bowel"] * study_uptake(),
        "liver": lambda: liver * (1 + 0.07 * texture),
        "spleen": a["suv_spleen"] * study_uptake(),
        "stomach": a["suv_stomach"] * study_uptake(),
        "kidney": a["suv_kidney"] * study_uptake(),
        "renal_pelvis": a["suv_urine"] * study_uptake(),
        "bladder": a["suv_bladder"] * study_uptake(),
        "aorta": 1.3,
        "lungs": 0.3,
        "heart": 1.2,
        "myocardium": 1.4,
        "bone": 1.0,
        "cortex": 0.6,
        "disc": 0.6,
        "canal": 0.4,
        "posterior_elements": 0.7,
        "skull": 0.5,
        "brain": a["suv_brain"] * study_uptake(),
        "ventricles": 0.05,
        "tonsils": a["suv_tonsil"] * study_uptake(),
        "parotid": salivary,
        "submandibular": 0.9 * salivary,
        "lacrimal": a["suv_lacrimal"] * study_uptake(),
        "prostate": a["suv_prostate"] * study_uptake(),
    }


def _node(rng, station: str, a: dict) -> dict:
    u, v, w = NODE_STATIONS[station]
    side = 1 if rng.random() < 0.5 else -1
    centre = np.array([side * u * a["A"], v * a["B"], w * a["H"]]) + rng.normal(0, 5.0, 3) * (1, 1, 0.7)
    return make_lesion(rng, centre, rng.uniform(3.0, 8.0), rng.uniform(5.0, 30.0), "node")


def draw_psma_lesions(rng, a: dict) -> list[dict]:
    """Prostate-cancer lesions: prostate bed, lymph nodes and bone metastases (at least one lesion)."""
    space = Space(a["shape"], AUTOPET_SPACING)
    o = body_parts(space, a)
    lesions = []
    if rng.random() < 0.6:  # the primary or a local recurrence in the prostate bed
        prostate = (psma_sites(space, a)["prostate"] <= 1) & o["body"]
        point = site_point(rng, space, prostate, 2.0)
        if point is not None:
            lesions.append(make_lesion(rng, point, rng.uniform(4.0, 10.0), rng.uniform(6.0, 35.0), "prostate"))
    for _ in range(int(rng.integers(0, 4))):
        lesions.append(_node(rng, str(rng.choice(_PSMA_NODE_STATIONS)), a))
    if rng.random() < 0.45:
        bone = (o["vertebra_d"] <= 1) | o["pelvis"] | o["ribs"] | o["femur"]
        for _ in range(int(rng.integers(1, 5))):
            point = site_point(rng, space, bone, 3.0)
            if point is not None:
                lesion = make_lesion(rng, point, rng.uniform(4.0, 9.0), rng.uniform(6.0, 40.0), "bone")
                lesions.append({**lesion, "hu_delta": 250.0})  # sclerotic
    if not lesions:
        lesions.append(_node(rng, "iliac", a))
    return lesions


def follow_up_psma_lesions(rng, lesions: list[dict], a: dict) -> list[dict]:
    """Lesions at a later time point (``follow_up_lesions`` with prostate-cancer lesions as new ones)."""
    return follow_up_lesions(
        rng, lesions, a, "psma", new_lesions=lambda r, _diagnosis, anatomy: draw_psma_lesions(r, anatomy)
    )
