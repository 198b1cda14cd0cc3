"""Whole-volume validation of a Mirror U-Net on preprocessed studies: the task's metrics per study.

Training calls this on its validation split; it runs the same sliding-window code as `predict` and
the same metric functions as `evaluate`. Metrics are computed on the preprocessed grid (its spacing
gives the voxel volume), which avoids resampling every prediction during training.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from .metrics import autopet_metrics, brats_metrics
from .sliding_window import SlidingWindowSettings, labels_from_logits, sliding_window_predict

TASKS = ("autopet", "brain_tumour")


def study_metrics(model, study, task: str, settings: SlidingWindowSettings | None = None) -> dict:
    """Predict one `PreprocessedStudy` (with a label) and score it: AutoPET dice / fpv_ml / fnv_ml,
    BrainTumour dice_wt / dice_tc / dice_et / hd95_*; `case_id` included."""
    result = sliding_window_predict(model, study.image, settings or SlidingWindowSettings(), parts=("logits",))
    prediction = labels_from_logits(model, result.logits)
    if task == "autopet":
        metrics = autopet_metrics(prediction, study.label, study.spacing).as_dict()
        keep = {k: metrics[k] for k in ("dice", "fpv_ml", "fnv_ml")}
    elif task == "brain_tumour":
        keep = brats_metrics(prediction, study.label, study.spacing).as_dict()
    else:
        raise ValueError(f"unknown task {task!r}; expected one of: {', '.join(TASKS)}")
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
    """The number a training run maximises to pick its best checkpoint: AutoPET mean Dice (minus
    FPV in litres as a tie-breaker when no validation study has lesions); BrainTumour mean of the
    region Dice scores that are defined."""
    if task == "autopet":
        if "dice" in summary:
            return summary["dice"]
        return -summary.get("fpv_ml", 0.0) / 1000.0
    dices = [summary[k] for k in ("dice_wt", "dice_tc", "dice_et") if k in summary]
    return float(np.mean(dices)) if dices else 0.0


def validate(model, studies: Iterable, task: str, settings: SlidingWindowSettings | None = None) -> list[dict]:
    """Per-study metric rows for every study of `studies` (for one process's share)."""
    return [study_metrics(model, study, task, settings) for study in studies]
