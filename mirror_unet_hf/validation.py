"""Whole-volume validation of a Mirror U-Net on preprocessed studies: the task's metrics per study.

Training calls this on its validation split; it runs the same sliding-window code as `predict` and
the same metric functions as `evaluate`. Metrics are computed on the preprocessed grid (its spacing
gives the voxel volume), which avoids resampling every prediction during training.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from .sliding_window import SlidingWindowSettings, labels_from_logits, sliding_window_predict
from .tasks import get_task


def study_metrics(model, study, task: str, settings: SlidingWindowSettings | None = None) -> dict:
    """Predict one `PreprocessedStudy` (with a label) and score it: AutoPET dice / fpv_ml / fnv_ml,
    BrainTumour dice_wt / dice_tc / dice_et / hd95_*; `case_id` included."""
    result = sliding_window_predict(model, study.image, settings or SlidingWindowSettings(), parts=("logits",))
    prediction = labels_from_logits(model, result.logits)
    keep = get_task(task).validation_metrics(prediction, study.label, study.spacing)
    return {"case_id": study.case_id, **keep}


def summarise(rows: Sequence[dict]) -> dict[str, float]:
    """Mean of every metric over the studies where it is defined (AutoPET Dice and FNV exist only
    for studies with lesions; FPV for all), plus `num_studies`."""
    summary: dict[str, float] = {"num_studies": float(len(rows))}
    keys = sorted({k for row in rows for k in row if k != "case_id"})
    for key in keys:
        values = [row[key] for row in rows if row.get(key) is not None and math.isfinite(row[key])]
        if values:
            summary[key] = float(np.mean(values))
    return summary


def selection_score(summary: dict[str, float], task: str) -> float:
    """The number a training run maximises to pick its best checkpoint (``TaskSpec.selection_score``):
    AutoPET mean Dice (minus FPV in litres as a tie-breaker when no validation study has lesions);
    BrainTumour mean of the region Dice scores that are defined."""
    return get_task(task).selection_score(summary)


def validate(model, studies: Iterable, task: str, settings: SlidingWindowSettings | None = None) -> list[dict]:
    """Per-study metric rows for every study of `studies` (for one process's share)."""
    return [study_metrics(model, study, task, settings) for study in studies]
