"""FDG PET/CT phantoms in the AutoPET 2022 layout (``FDG-PET-CT-Lesions/<patient>/<study>/``).

AutoPET phantoms (default 96 x 96 x 80 voxels at 2.0 x 2.0 x 3.0 mm, AutoPET's LAS affine): a
child-sized body from pelvis to head squeezed into a 192 x 192 x 240 mm field of view so a CPU
training run over 16 studies takes minutes. CT in HU: air -1000, table, subcutaneous/visceral fat
~-100, soft tissue ~40, lungs ~-820 with vessels, liver ~60, spleen, kidneys, bladder, heart, aorta,
spine/ribs/pelvis/skull ~+250..+900, bowel gas. PET in SUV: background 0.5-1.5, liver ~2, and the
classic false-positive traps: brain (6-11), myocardium (1.5-12), renal pelvis, bladder (8-40), tonsils,
stomach. Lesions per diagnosis: lymphoma = clustered nodes in 1-3 nodal stations (+ spleen);
lung cancer = lung primary +/- hilar/mediastinal node; melanoma = scattered liver / lung / skin /
nodal lesions; about half the studies negative. Lesion SUV 3-18 (some subtle, 3-4), diameters
6-32 mm, PET blurred to 6-7 mm FWHM with signal-dependent correlated noise. Every third patient has a
follow-up study (same anatomy, moved on the table, lesions evolved) to exercise patient grouping.
A ``Clinical Metadata FDG PET_CT Lesions.csv`` next to ``FDG-PET-CT-Lesions`` gives the diagnoses.

The pieces are public so other tracers reuse the body: ``draw_anatomy`` (geometry and uptake of a patient),
``body_parts`` / ``study_regions`` (organ masks), ``render_study(rng, anatomy, lesions, uptake, extra_regions)``
(CT, PET, mask) with a tracer's ``uptake`` (``fdg_uptake`` here, PSMA's in ``phantoms/psma.py``), and the lesion
helpers ``site_point``, ``make_lesion``, ``NODE_STATIONS`` and ``follow_up_lesions``.
"""

from __future__ import annotations

import csv
import datetime
import io
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ...files import atomic_write_bytes
from ..constants import AUTOPET_FILES, AUTOPET_LABEL_FILE, AUTOPET_METADATA_CSV
from ..nifti_io import encode_nifti
from .body import AUTOPET_SPACING, body_parts, draw_anatomy, study_regions
from .common import Space, phantom_nifti, smooth_noise

# diagnoses of each block of six patients (shuffled per block): half negative
_DIAGNOSIS_BLOCK = ("negative", "lymphoma", "negative", "melanoma", "negative", "lung_cancer")


def write_autopet_phantoms(out_dir: Path, root: Path, n: int, seed: int, shape: tuple[int, int, int]) -> None:
    """``n`` studies into ``root`` (the ``FDG-PET-CT-Lesions`` folder) and the TCIA metadata CSV into ``out_dir``."""
    rows = _write_autopet(root, n, seed, shape)
    atomic_write_bytes(out_dir / AUTOPET_METADATA_CSV, _metadata_csv(rows))


@dataclass
class _Study:
    patient: str
    folder: str
    date: datetime.date
    diagnosis: str
    age: int
    sex: str


def study_plan(n: int, seed: int) -> list[tuple[int, int]]:
    """(patient index, study index within the patient) for ``n`` studies; every third patient has two."""
    plan, patient = [], 0
    while len(plan) < n:
        studies = 2 if patient % 3 == 1 and n - len(plan) >= 2 else 1
        plan += [(patient, s) for s in range(studies)]
        patient += 1
    return plan


def patient_diagnosis(seed: int, patient: int) -> str:
    """The diagnosis of patient number ``patient``: each block of six patients is a shuffle of ``_DIAGNOSIS_BLOCK``."""
    block = np.random.default_rng([seed, 10_000 + patient // len(_DIAGNOSIS_BLOCK)]).permutation(len(_DIAGNOSIS_BLOCK))
    return _DIAGNOSIS_BLOCK[block[patient % len(_DIAGNOSIS_BLOCK)]]


def _write_autopet(root: Path, n: int, seed: int, shape: tuple[int, int, int]) -> list[_Study]:
    rows = []
    plan = study_plan(n, seed)
    current = None
    for patient, study_index in plan:
        if current is None or current[0] != patient:
            rng = np.random.default_rng([seed, patient, 0])
            diagnosis = patient_diagnosis(seed, patient)
            anatomy = draw_anatomy(rng, shape)
            lesions = draw_lesions(rng, diagnosis, anatomy) if diagnosis != "negative" else []
            identity = {
                "patient": "PETCT_" + rng.bytes(5).hex(),
                "age": int(rng.integers(22, 85)),
                "sex": "F" if rng.random() < 0.5 else "M",
                "first_date": datetime.date(2003, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 4500))),
            }
            current = (patient, diagnosis, anatomy, lesions, identity)
        _, diagnosis, anatomy, lesions, identity = current
        rng = np.random.default_rng([seed, patient, 1 + study_index])
        if study_index > 0 and lesions:
            lesions = follow_up_lesions(rng, lesions, anatomy, diagnosis)
        date = identity["first_date"] + datetime.timedelta(days=int(rng.integers(90, 400)) * study_index)
        folder = f"{date:%m-%d-%Y}-NA-PET-CT Ganzkoerper  primaer mit KM-{int(rng.integers(10000, 99999))}"
        ct, suv, seg, affine = render_study(rng, anatomy, lesions)
        study_dir = root / identity["patient"] / folder
        for array, filename in ((ct, AUTOPET_FILES["ct"]), (suv, AUTOPET_FILES["pet"]), (seg, AUTOPET_LABEL_FILE)):
            atomic_write_bytes(study_dir / filename, encode_nifti(phantom_nifti(array, affine), compresslevel=6))
        rows.append(
            _Study(
                identity["patient"],
                folder,
                date,
                "negative" if not np.any(seg) else diagnosis,
                identity["age"],
                identity["sex"],
            )
        )
    return rows


def _metadata_csv(rows: list[_Study]) -> bytes:
    """The TCIA metadata format: one row per series (CT, PT, SEG); dates m/d/YYYY; diagnosis in capitals."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["Subject ID", "Study UID", "Study Description", "Study Date", "Modality", "diagnosis", "age", "sex"]
    )
    for number, row in enumerate(rows):
        uid = f"1.2.826.0.1.3680043.8.498.{number + 1}"
        for modality in ("CT", "PT", "SEG"):
            writer.writerow(
                [
                    row.patient,
                    uid,
                    "PET-CT Ganzkoerper  primaer mit KM",
                    f"{row.date.month}/{row.date.day}/{row.date.year}",
                    modality,
                    row.diagnosis.upper(),
                    f"{row.age}Y",
                    row.sex,
                ]
            )
    return buffer.getvalue().encode()


def paint(volume: np.ndarray, mask: np.ndarray, value) -> None:
    """Set ``volume`` inside ``mask`` to ``value``: a number, an array broadcast to it, or a function making one."""
    value = value() if callable(value) else value
    mask = np.broadcast_to(mask, volume.shape)
    volume[mask] = value if np.isscalar(value) else np.broadcast_to(value, volume.shape)[mask]


def ct_values(o: dict) -> dict[str, object]:
    """HU of each tissue of ``study_regions``: a number or a function making a textured array."""
    texture = o["texture"]
    return {
        "table": -150.0,
        "body": lambda: 42.0 + 6 * texture,
        "fat": lambda: -105.0 + 8 * texture,
        "visceral_fat": -95.0,
        "bowel_gas": -950.0,
        "bowel_wall": 30.0,
        "liver": lambda: 58.0 + 5 * texture,
        "spleen": 48.0,
        "stomach": 25.0,
        "kidney": 32.0,
        "renal_pelvis": 12.0,
        "bladder": 8.0,
        "aorta": 42.0,
        "lungs": lambda: -830.0 + 25 * texture + np.maximum(o["vessels"] - 1.6, 0) * 450,
        "heart": 40.0,
        "myocardium": 45.0,
        "bone": lambda: 250.0 + 30 * texture,
        "cortex": 700.0,
        "disc": 85.0,
        "canal": 25.0,
        "posterior_elements": 550.0,
        "skull": 880.0,
        "brain": lambda: 36.0 + 3 * texture,
        "ventricles": 8.0,
        "tonsils": 40.0,
    }


def fdg_uptake(rng, o: dict, a: dict) -> dict[str, object]:
    """FDG's SUV of each tissue (a number or a function making an array); each organ's uptake varies by
    +-15 % from study to study, drawn in painting order."""

    def study_uptake():
        return rng.uniform(0.85, 1.15)

    texture = o["texture"]
    muscle = a["suv_muscle"] * study_uptake()
    liver = a["suv_liver"] * study_uptake()
    suv = {
        "table": 0.0,
        "body": lambda: muscle * (1 + 0.08 * texture),
        "fat": 0.3,
        "visceral_fat": 0.35,
        "bowel_gas": 0.0,
        "bowel_wall": muscle * 1.6,
        "liver": lambda: liver * (1 + 0.07 * texture),
        "spleen": 0.85 * a["suv_liver"] * study_uptake(),
        "stomach": a["suv_stomach"] * study_uptake(),
        "kidney": a["suv_kidney"] * study_uptake(),
        "renal_pelvis": a["suv_urine"] * study_uptake(),
        "bladder": a["suv_bladder"] * study_uptake(),
        "aorta": 1.7,
        "lungs": lambda: 0.35 + 0.15 * np.maximum(o["vessels"] - 1.6, 0),
        "heart": 1.8,
        "myocardium": a["suv_heart"] * study_uptake(),
        "bone": 1.4,
        "cortex": 0.9,
        "disc": 0.9,
        "canal": 0.7,
        "posterior_elements": 0.9,
        "skull": 0.6,
    }
    brain = a["suv_brain"] * study_uptake()
    suv["brain"] = lambda: brain * np.where(o["head_d"] > 0.45, 1.15, 0.85)
    suv["ventricles"] = 1.0
    suv["tonsils"] = a["suv_tonsil"] * study_uptake()
    return suv


def paint_lesions(rng, space: Space, o: dict, lesions: list[dict], ct: np.ndarray, pet: np.ndarray) -> np.ndarray:
    """Paint ``lesions`` into the CT and PET (in place) and return their mask (uint8)."""
    seg = np.zeros(ct.shape, dtype=np.uint8)
    for lesion in lesions:
        d = space.ellipsoid(lesion["centre"], lesion["radii"])
        inside = (d <= 1) & o["body"]
        if not inside.any():
            continue
        seg[inside] = 1
        core = 1.0 - 0.55 * lesion["necrosis"] * np.clip(1 - d / 0.35, 0, 1)  # necrotic centres of big lesions
        paint(ct, inside, lesion["hu"] if lesion["hu"] is not None else ct + lesion["hu_delta"])
        paint(pet, inside, lesion["suv"] * core * rng.uniform(0.85, 1.15))
    return seg


def acquire(rng, ct: np.ndarray, pet: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the scanner makes of the true images: PET blurred to 6-7 mm FWHM with signal-dependent correlated
    noise, CT slightly blurred with 9 HU noise and clipped to the 12-bit range."""
    shape = ct.shape
    fwhm = rng.uniform(6.0, 7.0)
    sigma = [fwhm / 2.3548 / s for s in AUTOPET_SPACING]
    pet = ndimage.gaussian_filter(pet, sigma)
    noise = smooth_noise(rng, shape, 0.7)
    pet = np.maximum(pet + 0.16 * np.sqrt(np.maximum(pet, 0)) * noise, 0).astype(np.float32)
    ct = ndimage.gaussian_filter(ct, 0.6) + rng.normal(0, 9.0, size=shape).astype(np.float32)
    return np.clip(ct, -1024, 3071).astype(np.float32), pet


def phantom_affine(shape) -> np.ndarray:
    """AutoPET's LAS affine of a phantom grid (2 x 2 x 3 mm, centred in x and y)."""
    sx, sy, sz = AUTOPET_SPACING
    return np.array(
        [[-sx, 0, 0, (shape[0] - 1) / 2 * sx], [0, sy, 0, -(shape[1] - 1) / 2 * sy], [0, 0, sz, -900.0], [0, 0, 0, 1]],
        dtype=np.float64,
    )


def render_study(rng, a: dict, lesions: list[dict], uptake=fdg_uptake, extra_regions=None):
    """CT (HU), PET (SUV) and lesion mask of one study, and the LAS affine.

    ``uptake(rng, parts, anatomy)`` gives the tracer's SUV per tissue (``fdg_uptake``; PSMA's is in
    ``phantoms/psma.py``); ``extra_regions(space, parts, anatomy)`` yields ``(name, mask)`` of tracer-specific
    tissues, painted after the others in the PET only.
    """
    shape = a["shape"]
    shift = (rng.uniform(-4, 4), rng.uniform(-3, 3), rng.uniform(-6, 6))
    space = Space(shape, AUTOPET_SPACING, shift)
    o = body_parts(space, a)
    hu, suv = ct_values(o), uptake(rng, o, a)
    ct = np.full(shape, -1000.0, dtype=np.float32)
    pet = np.zeros(shape, dtype=np.float32)
    regions = study_regions(space, o, a)
    if extra_regions is not None:
        regions = itertools.chain(regions, extra_regions(space, o, a))
    for name, mask in regions:
        if name in hu:
            paint(ct, mask, hu[name])
        paint(pet, mask, suv[name])
    seg = paint_lesions(rng, space, o, lesions, ct, pet)
    ct, pet = acquire(rng, ct, pet)
    return ct, pet, seg, phantom_affine(shape)


# lymph-node stations, in fractions of (A, B, H); each mirrored left/right
NODE_STATIONS = {
    "cervical": (0.20, -0.15, 0.76),
    "axillary": (0.80, -0.05, 0.655),
    "mediastinal": (0.05, 0.12, 0.62),
    "hilar": (0.22, -0.02, 0.585),
    "para_aortic": (0.12, -0.33, 0.30),
    "iliac": (0.30, -0.05, 0.15),
    "inguinal": (0.45, 0.45, 0.03),
}


def site_point(rng, space: Space, mask: np.ndarray, margin_mm: float):
    """A random voxel centre (mm) inside ``mask`` at least ``margin_mm`` from its edge (or anywhere in it)."""
    depth = ndimage.distance_transform_edt(mask, sampling=space.spacing)
    candidates = np.argwhere(depth >= margin_mm)
    if len(candidates) == 0:
        candidates = np.argwhere(mask)
    if len(candidates) == 0:
        return None
    i, j, k = candidates[rng.integers(len(candidates))]
    return (float(space.X[i, 0, 0]), float(space.Y[0, j, 0]), float(space.Z[0, 0, k]))


def make_lesion(rng, centre, radius_mm, suv, kind):
    """One ellipsoidal lesion (radii +-25 % around ``radius_mm``; one in five subtle, SUV 3-4); ``kind`` sets its
    CT appearance (nodes, lung, skin and spleen lesions as soft tissue, liver lesions hypodense)."""
    radii = tuple(radius_mm * rng.uniform(0.75, 1.25) for _ in range(3))
    if rng.random() < 0.2:
        suv = rng.uniform(3.0, 4.0)  # subtle lesion
    hu = {"lung": 35.0, "node": 38.0, "skin": 40.0, "spleen": 38.0}.get(kind)
    return {
        "centre": tuple(float(c) for c in centre),
        "radii": radii,
        "suv": float(suv),
        "kind": kind,
        "hu": hu,
        "hu_delta": -22.0 if kind == "liver" else 0.0,
        "necrosis": float(radius_mm > 11 and rng.random() < 0.6),
    }


def draw_lesions(rng, diagnosis: str, a: dict) -> list[dict]:
    """FDG lesions of a patient with ``diagnosis`` (lymphoma, lung cancer, melanoma; see the module docstring)."""
    A, B, H = a["A"], a["B"], a["H"]
    space = Space(a["shape"], AUTOPET_SPACING)
    o = body_parts(space, a)

    def node(station, side, spread=6.0):
        u, v, w = NODE_STATIONS[station]
        centre = np.array([side * u * A, v * B, w * H]) + rng.normal(0, spread, 3) * (1, 1, 0.7)
        return make_lesion(rng, centre, rng.uniform(4.0, 10.0), rng.uniform(5.0, 16.0), "node")

    def organ(mask, kind, radius, suv):
        point = site_point(rng, space, mask, radius + 2.0)
        return None if point is None else make_lesion(rng, point, radius, suv, kind)

    lesions = []
    if diagnosis == "lymphoma":
        stations = rng.choice(list(NODE_STATIONS), size=int(rng.integers(1, 4)), replace=False)
        for station in stations:
            side = 1 if rng.random() < 0.5 else -1
            centre_node = node(station, side, spread=3.0)
            lesions.append(centre_node)
            for _ in range(int(rng.integers(1, 4))):  # a cluster around the first node
                offset = rng.normal(0, 9.0, 3) * (1, 1, 0.8)
                lesions.append(
                    make_lesion(
                        rng,
                        np.add(centre_node["centre"], offset),
                        rng.uniform(4.0, 9.0),
                        rng.uniform(5.0, 16.0),
                        "node",
                    )
                )
        if rng.random() < 0.25:
            lesions.append(organ(o["spleen"], "spleen", rng.uniform(4.0, 8.0), rng.uniform(4.0, 10.0)))
    elif diagnosis == "lung_cancer":
        side_mask = o["lung_r"] if rng.random() < 0.55 else o["lung_l"]
        lung = side_mask & o["trunk"]
        lesions.append(organ(lung, "lung", rng.uniform(6.0, 16.0), rng.uniform(6.0, 16.0)))
        side = 1 if side_mask is o["lung_r"] else -1
        if rng.random() < 0.6:
            lesions.append(node("hilar", side, spread=2.0))
        if rng.random() < 0.3:
            lesions.append(node("mediastinal", side, spread=2.0))
    elif diagnosis == "melanoma":
        skin = o["trunk"] & (o["rho"] > 0.9) & (o["rho"] < 0.97) & (o["t"] > 0.1) & (o["t"] < 0.68)
        for _ in range(int(rng.integers(1, 6))):
            site = rng.choice(["liver", "lung", "skin", "node", "node"])
            if site == "liver":
                lesions.append(organ(o["liver"], "liver", rng.uniform(4.0, 11.0), rng.uniform(4.0, 12.0)))
            elif site == "lung":
                lesions.append(
                    organ(
                        (o["lung_r"] | o["lung_l"]) & o["trunk"], "lung", rng.uniform(3.0, 8.0), rng.uniform(3.0, 10.0)
                    )
                )
            elif site == "skin":
                lesions.append(organ(skin, "skin", rng.uniform(3.0, 7.0), rng.uniform(3.0, 10.0)))
            else:
                station = rng.choice(["axillary", "inguinal", "cervical"])
                lesions.append(node(station, 1 if rng.random() < 0.5 else -1))
    lesions = [lesion for lesion in lesions if lesion is not None]
    if not lesions:  # a positive study always shows at least one lesion
        lesions.append(node("mediastinal", 1))
    return lesions


def follow_up_lesions(rng, lesions: list[dict], a: dict, diagnosis: str, new_lesions=draw_lesions) -> list[dict]:
    """Lesions at a later time point: most persist with changed size and uptake, some respond, rarely a new one
    (the first of ``new_lesions(rng, diagnosis, anatomy)``: the disease's pattern)."""
    evolved = []
    for lesion in lesions:
        if rng.random() < 0.25:
            continue
        scale = rng.uniform(0.6, 1.3)
        evolved.append(
            {
                **lesion,
                "radii": tuple(r * scale for r in lesion["radii"]),
                "suv": max(3.0, lesion["suv"] * rng.uniform(0.5, 1.2)),
            }
        )
    if rng.random() < 0.3 or not evolved:
        evolved += new_lesions(rng, diagnosis, a)[:1]
    return evolved
