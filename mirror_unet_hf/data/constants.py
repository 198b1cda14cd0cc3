"""Names of the built-in datasets' files, modalities, label classes and AutoPET diagnoses (the tasks use them).

Tuples (immutable); pass ``list(...)`` where a config field wants a list.
"""

from __future__ import annotations

# AutoPET: CT resampled to the PET grid (CTres) and PET in SUV units; SEG is the lesion mask on the PET grid.
AUTOPET_MODALITIES = ("ct", "pet")
AUTOPET_FILES = {"ct": "CTres.nii.gz", "pet": "SUV.nii.gz"}
AUTOPET_LABEL_FILE = "SEG.nii.gz"
AUTOPET_FOLDER = "FDG-PET-CT-Lesions"
AUTOPET_METADATA_CSV = "Clinical Metadata FDG PET_CT Lesions.csv"
AUTOPET_LABEL_NAMES = ("background", "lesion")
# autoPET III/IV: the tracer is the case id's prefix (fdg_3c6e4f2a1b_05-02-2002, psma_95b833d46f153cd2_2018-04-16)
AUTOPET_TRACERS = ("fdg", "psma")

# MSD Task01: one 4D channel-last image per case, channels 0..3 in this order (dataset.json "modality").
BRAIN_TUMOUR_MODALITIES = ("flair", "t1w", "t1gd", "t2w")
BRAIN_TUMOUR_FOLDER = "Task01_BrainTumour"
BRAIN_TUMOUR_LABEL_NAMES = ("background", "edema", "non-enhancing tumour", "enhancing tumour")

# AutoPET study diagnoses; the metadata CSV spells them NEGATIVE / LYMPHOMA / MELANOMA / LUNG_CANCER.
DIAGNOSIS_NAMES = ("negative", "lymphoma", "melanoma", "lung_cancer")
UNKNOWN_DIAGNOSIS = "unknown"


def diagnosis_from_metadata(value: str | None) -> str:
    """Map a metadata CSV value (``LUNG_CANCER``, ``lung cancer`` ...) to a name in ``DIAGNOSIS_NAMES``, else ``"unknown"``."""
    if value is None:
        return UNKNOWN_DIAGNOSIS
    key = "_".join(str(value).strip().lower().replace("-", " ").split())
    return key if key in DIAGNOSIS_NAMES else UNKNOWN_DIAGNOSIS


def diagnosis_index(name: str | None) -> int:
    """Index of a diagnosis name in ``DIAGNOSIS_NAMES``; -1 for unknown or missing (e.g. BrainTumour)."""
    return DIAGNOSIS_NAMES.index(name) if name in DIAGNOSIS_NAMES else -1
