"""Train a Mirror U-Net with Accelerate: one CPU, one GPU, many GPUs or several machines.

    accelerate launch train/train.py --config train/configs/phantoms-cpu.yaml
    accelerate launch train/train.py --preset autopet-v3 --dataset autopet --data_dir /data/autopet

Without `--data_dir` the script generates synthetic phantoms into a cache folder and trains on them,
so it runs on a fresh machine. Shape of the script: arguments → Accelerator → data → prepare → loop
with `accelerator.accumulate` → whole-volume validation on all processes → atomic `save_state`
checkpoints (`--resume_from_checkpoint PATH|latest`) → `save_pretrained` of `best/` and `final/`
(remote code, `metrics.json`, `training_args.json`) → optional push to the Hub.
The reusable pieces live in `mirror_unet_hf.training`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

# `python train/train.py` from a checkout without installing works too
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from mirror_unet_hf import MirrorUNetConfig
from mirror_unet_hf.data import MirrorPatchDataset, prepare_studies
from mirror_unet_hf.errors import CONFIG_ERRORS, UserInputError, one_line
from mirror_unet_hf.files import atomic_write_json
from mirror_unet_hf.sliding_window import SlidingWindowSettings
from mirror_unet_hf.training.arguments import (
    TrainingArguments,
    build_config,
    check_args,
    parse_args,
)
from mirror_unet_hf.training.checkpointing import Checkpointer, TrainerState
from mirror_unet_hf.training.data import (
    patch_loader,
    sampling_info,
    training_data,
    training_patches,
    uses_phantoms,
)
from mirror_unet_hf.training.export import Exporter, training_run_info
from mirror_unet_hf.training.loop import (
    Evaluator,
    LossWindow,
    epoch_batches,
    fission_only_loss,
    is_due,
    make_optimizer,
    make_scheduler,
    pool_dice_over_processes,
)
from mirror_unet_hf.training.model import count_trainable, initial_model, load_base_config
from mirror_unet_hf.training.reporting import run_header, tracker_config


@dataclass
class TrainingRun:
    """What the loop works on: the settings, the prepared objects, and the run's helpers."""

    args: TrainingArguments
    config: MirrorUNetConfig
    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: torch.utils.data.DataLoader
    train_set: MirrorPatchDataset
    state: TrainerState
    evaluator: Evaluator
    checkpointer: Checkpointer
    exporter: Exporter


def main(argv: list[str] | None = None) -> int:
    """User mistakes print one line and exit 2 (`--debug` shows the traceback); internal errors keep theirs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    try:
        return train(parse_args(argv, description=__doc__.split("\n\n")[0]))
    except (UserInputError, *CONFIG_ERRORS) as error:
        if debug:
            raise
        print(f"train.py: error: {one_line(error)}", file=sys.stderr)
        return 2


def tracker_names(args: TrainingArguments) -> list[str] | str:
    """`--report_to` as Accelerate's `log_with` takes it; empty for none."""
    return [] if args.report_to == "none" else args.report_to


def make_accelerator(args: TrainingArguments) -> Accelerator:
    """Gradient accumulation, mixed precision, trackers logging into `output_dir/logs`."""
    output = Path(args.output_dir)
    return Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=tracker_names(args) or None,
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "logs")),
        step_scheduler_with_optimizer=False,  # the LR schedule counts optimizer updates, whatever the process count
    )


def train(args: TrainingArguments) -> int:
    """The whole run; every check that needs no data comes before the Accelerator and the data."""
    check_args(args)
    config = build_config(args)
    load_base_config(args, config)  # a --model_name_or_path that does not fit fails here, before any data
    checkpointer = Checkpointer(args.output_dir, args.checkpoints_total_limit)
    resume = checkpointer.resolve(args.resume_from_checkpoint)
    resuming = resume is not None or args.resume_from_checkpoint == "latest"
    checkpointer.check_output_dir(args.overwrite_output_dir, resuming=resuming)

    accelerator = make_accelerator(args)
    set_seed(args.seed)

    dataset, data_dir = training_data(args, accelerator, config)
    if accelerator.is_main_process:  # only once the data is known to be usable
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        if resume is None and args.overwrite_output_dir:
            checkpointer.clear_previous_run()
    accelerator.wait_for_everyone()
    train_set = training_patches(args, config, dataset["train"])
    validation = prepare_studies(dataset["validation"], config)
    loader = patch_loader(args, train_set)

    model = initial_model(args, config)
    pool_dice_over_processes(model, accelerator)
    parameters = count_trainable(model)
    if args.sync_batchnorm and accelerator.num_processes > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = make_optimizer(args, model.parameters())
    scheduler = make_scheduler(args, optimizer)
    # The scheduler is not prepared: its state goes into trainer_state.json, unpickled (Checkpointer.save).
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    device = str(next(accelerator.unwrap_model(model).parameters()).device)
    run_info = training_run_info(args, accelerator, dataset, data_dir, uses_phantoms(args, data_dir))
    run_info.update(sampling_info(train_set))
    accelerator.print(run_header(run_info, parameters, accelerator.mixed_precision, device))
    state = TrainerState(loader_layout=loader_layout(args, accelerator))
    if resume is not None:
        state = checkpointer.load(accelerator, resume, scheduler)
        accelerator.print(f"Resumed from {resume} at step {state.step}")
        warn_if_layout_changed(accelerator, state, loader_layout(args, accelerator))
    if accelerator.is_main_process and tracker_names(args):
        accelerator.init_trackers("mirror-unet", config=tracker_config(args))

    precision = "bf16" if accelerator.mixed_precision == "bf16" else "fp32"
    settings = SlidingWindowSettings(overlap=args.overlap, precision=precision, device=device)
    run = TrainingRun(
        args,
        config,
        accelerator,
        model,
        optimizer,
        scheduler,
        loader,
        train_set,
        state,
        evaluator=Evaluator(accelerator, validation, args.dataset, settings),
        checkpointer=checkpointer,
        exporter=Exporter(accelerator, args.output_dir, run_info),
    )
    last_metrics = train_loop(run)
    finish(run, last_metrics)
    return 0


def loader_layout(args: TrainingArguments, accelerator: Accelerator) -> dict:
    """What the order of an epoch's batches depends on besides the seed (checked when a run resumes)."""
    return {
        "num_workers": args.num_workers,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "num_processes": accelerator.num_processes,
    }


def warn_if_layout_changed(accelerator: Accelerator, state: TrainerState, layout: dict) -> None:
    """A resume with other workers, batch size or process count orders the epoch's batches differently: the rest
    of the epoch is not what the interrupted run would have seen (the run goes on; the user is told)."""
    changed = [f"{k} {state.loader_layout[k]} -> {v}" for k, v in layout.items() if state.loader_layout.get(k, v) != v]
    if changed:
        accelerator.print(
            f"Warning: resuming with {', '.join(changed)}: the rest of epoch {state.epoch} is drawn in another "
            "order than the interrupted run would have drawn it, so the result will not equal an uninterrupted run"
        )
    state.loader_layout = layout


def train_loop(run: TrainingRun) -> dict | None:
    """Optimizer updates up to `max_steps`, with logging, validation and checkpoints when due; returns the
    latest validation metrics."""
    args, accelerator, state = run.args, run.accelerator, run.state
    run.model.train()
    progress = tqdm(
        total=args.max_steps, initial=state.step, disable=not accelerator.is_local_main_process, desc="training"
    )
    window = LossWindow()
    last_metrics = state.last_metrics()
    while state.step < args.max_steps:
        for batch in epoch_batches(accelerator, run.loader, run.train_set, state, args.seed):
            state.batches_in_epoch += 1
            out, loss = training_step(run, batch)
            if not accelerator.sync_gradients:
                continue
            run.scheduler.step()
            state.step += 1
            window.add(accelerator.reduce(loss.detach(), reduction="mean").item())
            progress.update(1)
            if is_due(state.step, args.logging_steps, args.max_steps):
                log_training(run, out, window, progress)
            if is_due(state.step, args.eval_steps, args.max_steps):
                last_metrics = evaluate(run, progress)
            if is_due(state.step, args.checkpointing_steps, args.max_steps):
                run.checkpointer.save(accelerator, state, run.scheduler)
            if state.step >= args.max_steps:
                break
        else:  # the epoch's data is exhausted
            state.epoch += 1
            state.batches_in_epoch = 0
    progress.close()
    return last_metrics


def training_step(run: TrainingRun, batch: dict):
    """Forward, loss, backward and (once the accumulated batches are in) an optimizer update."""
    with run.accelerator.accumulate(run.model):
        out = run.model(batch["pixel_values"], labels=batch["labels"], class_labels=batch["class_labels"])
        if run.args.fission_only:
            loss = fission_only_loss(out, run.config, run.state.step, run.args.seed)
        else:
            loss = out.loss
        run.accelerator.backward(loss)
        if run.args.max_grad_norm is not None and run.accelerator.sync_gradients:
            run.accelerator.clip_grad_norm_(run.model.parameters(), run.args.max_grad_norm)
        run.optimizer.step()
        run.optimizer.zero_grad()
    return out, loss


def log_training(run: TrainingRun, out, window: LossWindow, progress) -> None:
    """The mean loss since the last log line on the progress bar and to the trackers."""
    rate = window.rate
    progress.set_postfix(loss=f"{window.mean:.4f}", steps_per_s=f"{rate:.2f}")
    terms = {f"train/{k}": v.item() for k, v in out.loss_terms.items()}
    lr = run.scheduler.get_last_lr()[0]
    run.accelerator.log({"train/loss": window.mean, "train/lr": lr, **terms}, step=run.state.step)
    window.reset()


def evaluate(run: TrainingRun, progress) -> dict:
    """Validate on all processes, record the metrics, and export `best/` when the score improves."""
    accelerator, state = run.accelerator, run.state
    metrics = run.evaluator(run.model)
    score = run.evaluator.score(metrics)
    accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=state.step)
    state.history.append({"step": state.step, **metrics})
    if accelerator.is_main_process:  # through tqdm, so the line does not break the progress bar
        progress.write(f"step {state.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    if state.best_score is None or score > state.best_score:
        state.best_score, state.best_step = score, state.step
        run.exporter.save(run.model, "best", metrics, state.step)
    accelerator.wait_for_everyone()
    return metrics


def finish(run: TrainingRun, last_metrics: dict | None) -> None:
    """Export `final/`, write the run's `trainer_state.json`, close the trackers, push if asked."""
    accelerator = run.accelerator
    run.exporter.save(run.model, "final", last_metrics, run.state.step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(Path(run.args.output_dir) / "trainer_state.json", run.state.to_dict())
    accelerator.end_training()
    if run.args.push_to_hub and accelerator.is_main_process:
        run.exporter.push(run.args.hub_model_id)


if __name__ == "__main__":
    sys.exit(main())
