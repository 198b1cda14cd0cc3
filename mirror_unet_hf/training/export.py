"""The trained model as the run leaves it: `best/` and `final/` are `save_pretrained` folders (weights,
config, remote code, image processor and pipeline) with `training_args.json` (the run's settings) and
`metrics.json` (its validation metrics), each written into a hidden temporary folder and renamed;
`--push_to_hub` uploads one of them."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from ..files import replace_folder
from ..hub.checkpoint_files import write_metrics, write_training_args
from ..validation import split_groups
from .arguments import TrainingArguments
from .model import base_model_id


def training_run_info(args: TrainingArguments, accelerator, dataset, data_dir: str, phantoms: bool) -> dict:
    """The content of `training_args.json`: every flag, plus what the run found (data, processes, studies, the
    precision Accelerate chose, and the Hub id of the checkpoint it started from, if any)."""
    return {
        **dataclasses.asdict(args),
        "mixed_precision": accelerator.mixed_precision,  # what the run used: the flag, `accelerate launch` or config
        "base_model": base_model_id(args.model_name_or_path),
        "data_dir": str(data_dir),
        "phantoms": phantoms,
        "num_processes": accelerator.num_processes,
        "global_batch_size": args.per_device_train_batch_size * accelerator.num_processes,
        "train_studies": len(dataset["train"]),
        "validation_studies": len(dataset["validation"]),
    }


def write_run_files(folder: Path, run_info: dict, metrics: dict | None, step: int) -> None:
    """`training_args.json` and, when the run was validated, `metrics.json` (the format `push` and the model
    card read: task, dataset, split, number of studies, step, and the summary metrics; the task's groups, e.g.
    `{"fdg": {"num_studies": 3, "dice": ...}, "psma": {...}}`, under `groups` when it has any)."""
    write_training_args(folder, run_info)
    if metrics is None:
        return
    task = run_info["dataset"]
    overall, groups = split_groups(metrics)
    payload = {
        "task": task,
        "dataset": f"{task}-phantoms" if run_info["phantoms"] else task,
        "split": f"validation (fold {run_info['fold']} of {run_info['num_folds']})",
        "num_studies": int(overall.get("num_studies", 0)),
        "step": step,
        "metrics": {k: v for k, v in overall.items() if k != "num_studies"},
    }
    if groups:
        payload["groups"] = {
            group: {k: int(v) if k == "num_studies" else v for k, v in values.items()}
            for group, values in groups.items()
        }
    write_metrics(folder, payload)


class Exporter:
    """Writes `best/` and `final/` of one output folder from the main process."""

    def __init__(self, accelerator, output_dir: str | Path, run_info: dict):
        self.accelerator = accelerator
        self.output_dir = Path(output_dir)
        self.run_info = run_info

    def save(self, model, name: str, metrics: dict | None, step: int) -> None:
        """`save_pretrained` of the unwrapped model with the run files into `output_dir/name`, replacing a
        previous one only once complete. Does nothing on the other processes."""
        if not self.accelerator.is_main_process:
            return
        staging = self.output_dir / f".{name}.tmp"
        if staging.exists():
            shutil.rmtree(staging)
        self.accelerator.unwrap_model(model).save_pretrained(staging)
        write_run_files(staging, self.run_info, metrics, step)
        replace_folder(staging, self.output_dir / name)

    def push(self, hub_model_id: str) -> str:
        """Push `best/` (or `final/` if there is no `best/`) with its metrics; returns the URL."""
        from ..hub import (
            push_checkpoint,  # the Hub client is needed with --push_to_hub only
        )

        folder = self.output_dir / "best" if (self.output_dir / "best").exists() else self.output_dir / "final"
        metrics = folder / "metrics.json"
        # --hub_model_id names the repo for this run on purpose: a new version over older weights is intended
        url = push_checkpoint(folder, hub_model_id, metrics_path=metrics if metrics.exists() else None, overwrite=True)
        self.accelerator.print(f"Pushed {folder} to {url}")
        return url
