"""FDG and PSMA phantoms in the autoPET III/IV nnU-Net layout (``PSMA-FDG-PET-CT-Lesions/``).

``imagesTr/<case>_0000.nii.gz`` (CT, HU), ``imagesTr/<case>_0001.nii.gz`` (PET, SUV), ``labelsTr/<case>.nii.gz``,
``dataset.json`` and a ``splits_final.json`` of 5 patient-grouped folds stratified by tracer (the rule of
``mirror_unet_hf.data.splits``). Patients come in pairs, one FDG and one PSMA in a seeded order, so about half
the studies are each; FDG patients are drawn as in the AutoPET layout (``phantoms/autopet.py``: diagnoses,
half negative), PSMA patients as in ``phantoms/psma.py``. Case ids follow the release:
``fdg_<10 hex>_<MM-DD-YYYY>`` and ``psma_<16 hex>_<YYYY-MM-DD>``; every third patient has a follow-up study.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...files import atomic_write_bytes, atomic_write_json
from ..constants import AUTOPET_TRACERS
from ..nifti_io import encode_nifti
from ..splits import assign_folds
from .autopet import (
    draw_anatomy,
    draw_lesions,
    fdg_uptake,
    follow_up_lesions,
    patient_diagnosis,
    render_study,
    study_plan,
)
from .common import phantom_nifti
from .psma import (
    PSMA_NEGATIVE_FRACTION,
    draw_psma_anatomy,
    draw_psma_lesions,
    follow_up_psma_lesions,
    psma_regions,
    psma_uptake,
)

SPLIT_FOLDS = 5
_STREAM = 3  # separates these patients' random streams from the AutoPET layout's


@dataclass
class _Patient:
    index: int
    tracer: str
    key: str
    first_date: datetime.date
    anatomy: dict
    lesions: list = field(default_factory=list)
    diagnosis: str = "negative"


def patient_tracer(seed: int, patient: int) -> str:
    """The tracer of patient number ``patient``: each pair of patients is one FDG and one PSMA, in seeded order."""
    order = np.random.default_rng([seed, 20_000 + patient // 2, _STREAM]).permutation(len(AUTOPET_TRACERS))
    return AUTOPET_TRACERS[order[patient % 2]]


def _new_patient(seed: int, patient: int, shape: tuple[int, int, int]) -> _Patient:
    tracer = patient_tracer(seed, patient)
    rng = np.random.default_rng([seed, patient, 0, _STREAM])
    first_date = datetime.date(2014, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 3000)))
    if tracer == "fdg":
        diagnosis = patient_diagnosis(seed, patient)
        anatomy = draw_anatomy(rng, shape)
        lesions = draw_lesions(rng, diagnosis, anatomy) if diagnosis != "negative" else []
        return _Patient(patient, tracer, rng.bytes(5).hex(), first_date, anatomy, lesions, diagnosis)
    anatomy = draw_psma_anatomy(rng, shape)
    positive = rng.random() >= PSMA_NEGATIVE_FRACTION
    lesions = draw_psma_lesions(rng, anatomy) if positive else []
    return _Patient(
        patient, tracer, rng.bytes(8).hex(), first_date, anatomy, lesions, "prostate_cancer" if positive else "negative"
    )


def _render(rng, patient: _Patient, study_index: int):
    """CT, PET, mask and affine of one study of ``patient`` (a follow-up evolves the lesions)."""
    lesions = patient.lesions
    if patient.tracer == "fdg":
        if study_index > 0 and lesions:
            lesions = follow_up_lesions(rng, lesions, patient.anatomy, patient.diagnosis)
        return render_study(rng, patient.anatomy, lesions, fdg_uptake)
    if study_index > 0 and lesions:
        lesions = follow_up_psma_lesions(rng, lesions, patient.anatomy)
    return render_study(rng, patient.anatomy, lesions, psma_uptake, psma_regions)


def _case_id(patient: _Patient, date: datetime.date) -> str:
    return (
        f"{patient.tracer}_{patient.key}_{date:%m-%d-%Y}"
        if patient.tracer == "fdg"
        else f"psma_{patient.key}_{date:%Y-%m-%d}"
    )


def write_autopet3_phantoms(root: Path, n: int, seed: int, shape: tuple[int, int, int]) -> None:
    """``n`` studies, ``dataset.json`` and ``splits_final.json`` into ``root`` (the dataset folder)."""
    cases: list[tuple[str, str, str]] = []  # (case id, patient key, tracer)
    patient = None
    for index, study_index in study_plan(n, seed):
        if patient is None or patient.index != index:
            patient = _new_patient(seed, index, shape)
        rng = np.random.default_rng([seed, index, 1 + study_index, _STREAM])
        date = patient.first_date + datetime.timedelta(days=int(rng.integers(90, 400)) * study_index)
        case = _case_id(patient, date)
        ct, pet, seg, affine = _render(rng, patient, study_index)
        for array, path in (
            (ct, f"imagesTr/{case}_0000.nii.gz"),
            (pet, f"imagesTr/{case}_0001.nii.gz"),
            (seg, f"labelsTr/{case}.nii.gz"),
        ):
            atomic_write_bytes(root / path, encode_nifti(phantom_nifti(array, affine), compresslevel=6))
        cases.append((case, patient.key, patient.tracer))
    atomic_write_json(
        root / "dataset.json",
        {
            "channel_names": {"0": "CT", "1": "PET"},
            "labels": {"background": 0, "tumor": 1},
            "numTraining": len(cases),
            "file_ending": ".nii.gz",
            "name": "autoPET III/IV phantoms",
            "description": "Synthetic FDG and PSMA PET/CT written by mirror_unet_hf.data.make_phantoms; not patient data.",
        },
    )
    atomic_write_json(root / "splits_final.json", phantom_splits(cases))


def phantom_splits(cases: list[tuple[str, str, str]]) -> list[dict[str, list[str]]]:
    """nnU-Net's ``splits_final.json`` for ``(case id, patient, tracer)``: ``SPLIT_FOLDS`` patient-grouped,
    tracer-stratified folds."""
    folds = assign_folds([p for _, p, _ in cases], [t for _, _, t in cases], SPLIT_FOLDS, AUTOPET_TRACERS)
    return [
        {
            "train": sorted(c for (c, _, _), f in zip(cases, folds, strict=True) if f != k),
            "val": sorted(c for (c, _, _), f in zip(cases, folds, strict=True) if f == k),
        }
        for k in range(SPLIT_FOLDS)
    ]
