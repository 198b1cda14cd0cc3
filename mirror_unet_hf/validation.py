"""Whole-volume validation of a Mirror U-Net on preprocessed studies: the task's metrics per study.

Training calls this on its validation split; it runs the same sliding-window code as `predict` and
the same metric functions as `evaluate`, and reports the studies of each group (autoPET III/IV: FDG and
PSMA) besides all of them, as `evaluate` does. Metrics are computed on the preprocessed grid (its spacing
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


GROUP_SEPARATOR = "/"  # "fdg/dice": the mean Dice of the studies of group fdg


def summarise(rows: Sequence[dict], task: str | None = None) -> dict[str, float]:
    """Mean of every metric over the studies where it is defined (AutoPET Dice and FNV exist only
    for studies with lesions; FPV for all), plus `num_studies`. With `task`, the same per group of studies
    (`TaskSpec.case_group`: autoPET III/IV's tracer) under `<group>/<metric>` keys, e.g. `fdg/dice`,
    `psma/num_studies`; a task without groups adds none."""
    summary = mean_metrics(rows)
    if task is None:
        return summary
    group_of = get_task(task).case_group
    groups = sorted({group for row in rows if (group := group_of(row["case_id"])) is not None})
    for group in groups:
        members = [row for row in rows if group_of(row["case_id"]) == group]
        summary.update({f"{group}{GROUP_SEPARATOR}{k}": v for k, v in mean_metrics(members).items()})
    return summary


def mean_metrics(rows: Sequence[dict]) -> dict[str, float]:
    """`num_studies` and the mean of every metric over the rows where it is defined and finite."""
    summary: dict[str, float] = {"num_studies": float(len(rows))}
    keys = sorted({k for row in rows for k in row if k != "case_id"})
    for key in keys:
        values = [row[key] for row in rows if row.get(key) is not None and math.isfinite(row[key])]
        if values:
            summary[key] = float(np.mean(values))
    return summary


def split_groups(summary: dict[str, float]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """`summarise`'s result as (the metrics over all studies, {group: its metrics})."""
    overall, groups = {}, {}
    for key, value in summary.items():
        group, separator, metric = key.partition(GROUP_SEPARATOR)
        if separator:
            groups.setdefault(group, {})[metric] = value
        else:
            overall[key] = value
    return overall, groups


def selection_score(summary: dict[str, float], task: str) -> float:
    """The number a training run maximises to pick its best checkpoint (``TaskSpec.selection_score``):
    AutoPET mean Dice (minus FPV in litres as a tie-breaker when no validation study has lesions);
    BrainTumour mean of the region Dice scores that are defined."""
    return get_task(task).selection_score(summary)


def validate(model, studies: Iterable, task: str, settings: SlidingWindowSettings | None = None) -> list[dict]:
    """Per-study metric rows for every study of `studies` (for one process's share)."""
    return [study_metrics(model, study, task, settings) for study in studies]
