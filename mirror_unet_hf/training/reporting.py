"""What a training run tells its user and its trackers when it starts: the run header printed on the main process
(preset, parameters, data, processes, precision) and the hyperparameters logged to the trackers."""

from __future__ import annotations

import dataclasses
import json

from .arguments import TrainingArguments


def tracker_config(args: TrainingArguments) -> dict:
    """The flags as the trackers take hyperparameters: numbers and booleans as they are (so a tracker can plot and
    filter by them), text as text, lists as JSON text; unset flags are left out (TensorBoard takes no None)."""
    values = {}
    for name, value in dataclasses.asdict(args).items():
        if value is None:
            continue
        values[name] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return values


def run_header(run_info: dict, parameters: int, precision: str, device: str) -> str:
    """The lines printed when a run starts, from `training_run_info`'s record of the run; `precision` is
    Accelerate's `mixed_precision` ("no", "bf16" or "fp16")."""
    base = run_info.get("model_name_or_path")
    data = "phantoms in " if run_info["phantoms"] else ""
    batch = (
        f"{run_info['per_device_train_batch_size']} per process × {run_info['num_processes']} process(es)"
        f" × {run_info['gradient_accumulation_steps']} accumulation step(s)"
    )
    lines = [
        f"preset        {run_info['preset']}" + (f", starting from {base}" if base else ", random initialisation"),
        f"parameters    {parameters:,} trainable",
        f"data          {run_info['dataset']}: {data}{run_info['data_dir']} "
        f"({run_info['train_studies']} training / {run_info['validation_studies']} validation studies, "
        f"fold {run_info['fold']} of {run_info['num_folds']})",
        f"patches       {run_info['patches_per_volume']} per study, augmentation {run_info['augment']}"
        + ("" if run_info["clip_intensities"] else ", intensity windows not clipped")
        + (", one study per batch" if run_info["patches_from_one_study"] else ""),
        f"epoch         {run_info['epoch_sampling']}: {run_info['epoch_patches']} patches",
        f"batch         {batch}",
        f"processes     {run_info['num_processes']} on {device}, {run_info['num_workers']} DataLoader worker(s) each",
        f"precision     {'fp32' if precision == 'no' else precision + ' mixed precision'}"
        + (", gradient checkpointing" if run_info["gradient_checkpointing"] else "")
        + (f", gradient norm clipped to {run_info['max_grad_norm']}" if run_info["max_grad_norm"] else ""),
        f"optimisation  {run_info['optimizer']}, lr {run_info['learning_rate']}, {run_info['max_steps']} updates, "
        f"seed {run_info['seed']}",
        f"output        {run_info['output_dir']}",
    ]
    return "\n".join(["Mirror U-Net training run", *("  " + line for line in lines)])
