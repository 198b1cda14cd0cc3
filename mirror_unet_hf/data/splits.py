"""Deterministic k-fold cross-validation grouped by patient and stratified by a per-study label.

The label is the task's ``stratify_column`` (AutoPET: the diagnosis, autoPET III: the tracer) and its known
values are the task's ``stratum_values`` (``order`` below; AutoPET's ``DIAGNOSIS_NAMES`` by default). The rule
(``assign_folds``):

1. Studies are grouped by ``patient_id``; a patient's studies always land in the same fold, so no
   patient is ever on both sides of a split.
2. Each patient gets one stratum: its most frequent known value (ties broken by the order of ``order``),
   or ``"unknown"`` when none of its studies has a known value (BrainTumour cases, AutoPET without
   metadata).
3. Strata are processed in the order ``order + ("unknown",)``; inside a stratum patients are ordered by
   the SHA-256 of their id, which depends neither on the order files were found in nor on Python's hash
   seed.
4. Each patient goes to the fold holding the fewest studies of its stratum so far, then the fewest
   studies overall, then the lowest fold index.

Fold ``k`` is the validation set of split ``k``; the other folds are its training set. With one study
per patient every stratum's counts differ by at most one between folds.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence

from ..errors import UserInputError
from .constants import DIAGNOSIS_NAMES, UNKNOWN_DIAGNOSIS


def check_fold(fold: int, num_folds: int) -> None:
    """``UserInputError`` unless ``num_folds >= 2`` and ``0 <= fold < num_folds`` (integers)."""
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
        raise UserInputError(f"num_folds must be an integer >= 2, got {num_folds!r}")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < num_folds:
        raise UserInputError(f"fold {fold!r} is out of range; expected an integer in 0..{num_folds - 1}")


def assign_folds(
    patient_ids: Sequence[str], strata: Sequence[str] | None, num_folds: int, order: Sequence[str] = DIAGNOSIS_NAMES
) -> list[int]:
    """Fold index (0..num_folds-1) of every study, following the rule in the module docstring.

    ``strata``: each study's label (a diagnosis, a tracer), or None for no stratification; ``order``: its
    known values, in the order folds are filled (any other value counts as unknown)."""
    check_fold(0, num_folds)
    if strata is None:
        strata = [UNKNOWN_DIAGNOSIS] * len(patient_ids)
    if len(strata) != len(patient_ids):
        raise ValueError("patient_ids and strata must have the same length")
    studies_of: dict[str, list[int]] = defaultdict(list)
    for index, patient in enumerate(patient_ids):
        studies_of[str(patient)].append(index)

    known = [value for value in order if value != UNKNOWN_DIAGNOSIS]
    order = known + [UNKNOWN_DIAGNOSIS]
    patients_of: dict[str, list[str]] = defaultdict(list)
    for patient, indices in studies_of.items():
        counts = Counter(strata[i] for i in indices if strata[i] in known)
        stratum = min(counts, key=lambda d: (-counts[d], order.index(d))) if counts else UNKNOWN_DIAGNOSIS
        patients_of[stratum].append(patient)

    per_stratum = {s: [0] * num_folds for s in order}
    overall = [0] * num_folds
    fold_of = [0] * len(patient_ids)
    for stratum in order:
        for patient in sorted(patients_of.get(stratum, []), key=lambda p: (hashlib.sha256(p.encode()).hexdigest(), p)):
            size = len(studies_of[patient])
            fold = min(range(num_folds), key=lambda f: (per_stratum[stratum][f], overall[f], f))
            per_stratum[stratum][fold] += size
            overall[fold] += size
            for index in studies_of[patient]:
                fold_of[index] = fold
    return fold_of


def split_indices(
    patient_ids: Sequence[str],
    strata: Sequence[str] | None,
    fold: int,
    num_folds: int,
    order: Sequence[str] = DIAGNOSIS_NAMES,
) -> tuple[list[int], list[int]]:
    """``(train, validation)`` study indices of split ``fold``; see the module docstring."""
    check_fold(fold, num_folds)
    folds = assign_folds(patient_ids, strata, num_folds, order)
    train = [i for i, f in enumerate(folds) if f != fold]
    validation = [i for i, f in enumerate(folds) if f == fold]
    return train, validation
