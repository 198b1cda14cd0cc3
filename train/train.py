"""Train a Mirror U-Net with Accelerate: one CPU, one GPU, many GPUs or several machines.

    accelerate launch train/train.py --config train/configs/phantoms-cpu.yaml
    accelerate launch train/train.py --preset autopet-v3 --dataset autopet --data_dir /data/autopet

Without `--data_dir` the script generates synthetic phantoms into a cache folder and trains on them,
so it runs on a fresh machine. Shape of the script: arguments → Accelerator → data → prepare → loop
with `accelerator.accumulate` → whole-volume validation on all processes → atomic `save_state`
checkpoints (`--resume_from_checkpoint PATH|latest`) → `save_pretrained` of `best/` and `final/`
(remote code, `metrics.json`, `training_args.json`) → optional push to the Hub.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# `python train/train.py` from a checkout without installing works too
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mirror_unet_hf.errors import CONFIG_ERRORS, UserInputError, one_line  # noqa: E402
from mirror_unet_hf.files import atomic_write_json, replace_folder  # noqa: E402

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")


@dataclass
class TrainingArguments:
    """Every flag of `train/train.py`; a `--config FILE.yaml` may set any of them (flags win)."""

    preset: str = field(default="autopet-v3", metadata={"help": "model preset (see `mirror-unet presets`)"})
    model_overrides: str | None = field(
        default=None,
        metadata={"help": 'JSON object of config fields to override, e.g. \'{"channels": [8, 16, 32, 64, 128], "norm": "instance"}\''},
    )
    dataset: str = field(default="autopet", metadata={"help": "autopet or brain_tumour"})
    data_dir: str | None = field(
        default=None, metadata={"help": "dataset folder (AutoPET / MSD layout); empty = generate phantoms into --phantom_dir"}
    )
    phantom_dir: str | None = field(default=None, metadata={"help": "where phantoms are generated (default: <output_dir>/../phantom-cache/<layout>-n<N>-s<seed>)"})
    phantom_count: int = field(default=24, metadata={"help": "number of phantom studies to generate"})
    phantom_seed: int = field(default=0, metadata={"help": "seed of the phantom generator"})
    phantom_shape: list[int] | None = field(default=None, metadata={"help": "phantom volume shape (default: the generator's)"})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder (default: <output_dir>/../datasets-cache)"})
    output_dir: str = field(default="outputs/mirror-unet", metadata={"help": "where checkpoints, best/ and final/ go"})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "allow a new run in a non-empty output_dir"})
    fold: int = field(default=0, metadata={"help": "validation fold"})
    num_folds: int = field(default=5, metadata={"help": "number of patient-grouped folds"})
    patch_size: list[int] | None = field(default=None, metadata={"help": "training patch size (default: the preset's, 96³)"})
    patches_per_volume: int = field(default=4, metadata={"help": "patches drawn per study and epoch"})
    pos_neg_ratio: list[float] = field(default_factory=lambda: [2.0, 1.0], metadata={"help": "positive:negative patch centres"})
    per_device_train_batch_size: int = field(default=2, metadata={"help": "patches per device and step"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "steps accumulated per optimizer update"})
    optimizer: str = field(default="adam", metadata={"help": "adam (paper), adamw, or sgd (momentum 0.99, nesterov, as nnU-Net)"})
    learning_rate: float = field(default=1e-3, metadata={"help": "learning rate (paper, Adam: 1e-3)"})
    weight_decay: float = field(default=1e-5, metadata={"help": "weight decay (paper: 1e-5)"})
    lr_decay_every: int | None = field(
        default=None, metadata={"help": "multiply the LR by --lr_decay_factor every N updates (paper: every 250 of 400 epochs; default: 5/8 of max_steps)"}
    )
    lr_decay_factor: float = field(default=0.1, metadata={"help": "step-decay factor"})
    max_steps: int = field(default=1000, metadata={"help": "optimizer updates to train for"})
    lambda_seg: float | None = field(default=None, metadata={"help": "segmentation loss weight (default: the preset's, 1.0)"})
    lambda_rec: float | None = field(default=None, metadata={"help": "reconstruction loss weight (default: 0.1)"})
    lambda_cls: float | None = field(default=None, metadata={"help": "classification loss weight (default: 0.1)"})
    seed: int = field(default=42, metadata={"help": "seed of weights, sampling and dropout"})
    mixed_precision: str = field(default="no", metadata={"help": "no, bf16 or fp16 (through Accelerate)"})
    sync_batchnorm: bool = field(default=False, metadata={"help": "convert BatchNorm to SyncBatchNorm for multi-process runs"})
    fission_only: bool = field(
        default=False, metadata={"help": "Valindria et al.: each step trains one randomly chosen branch only"}
    )
    eval_steps: int = field(default=200, metadata={"help": "validate every N updates (and at the end)"})
    checkpointing_steps: int = field(default=200, metadata={"help": "save a resumable checkpoint every N updates"})
    checkpoints_total_limit: int | None = field(default=3, metadata={"help": "keep at most this many checkpoints"})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "checkpoint folder or 'latest'"})
    overlap: float = field(default=0.25, metadata={"help": "sliding-window overlap in validation"})
    num_workers: int = field(default=2, metadata={"help": "DataLoader workers"})
    report_to: str = field(default="tensorboard", metadata={"help": "Accelerate tracker(s): tensorboard, wandb, all or none"})
    logging_steps: int = field(default=10, metadata={"help": "log the loss every N updates"})
    push_to_hub: bool = field(default=False, metadata={"help": "push best/ (or final/) to the Hub at the end"})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo id for --push_to_hub"})
    max_train_studies: int | None = field(default=None, metadata={"help": "use only the first N training studies (debugging)"})
    skip_bad: bool = field(
        default=False, metadata={"help": "leave out unreadable studies when building the dataset (each is listed) instead of stopping"}
    )


# ---------------------------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> TrainingArguments:
    """Flags, on top of an optional `--config FILE.yaml`; a mistake is one line and exit code 2."""
    import argparse

    import yaml
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        def error(self, message):
            raise UserInputError(message)

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    parser = Parser(TrainingArguments, description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML file setting any of the flags below (flags given on the command line win)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of user errors")
    if known.config:
        path = Path(known.config)
        if not path.is_file():
            raise UserInputError(f"--config {path}: file not found")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise UserInputError(f"--config {path}: not valid YAML ({str(error).splitlines()[0]})") from None
        names = {f.name for f in dataclasses.fields(TrainingArguments)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UserInputError(f"--config {path}: unknown setting(s) {', '.join(unknown)}")
        if isinstance(values.get("model_overrides"), dict):
            values["model_overrides"] = json.dumps(values["model_overrides"])
        parser.set_defaults(**values)
    _, unknown = parser.parse_known_args(rest)
    if unknown:
        raise UserInputError(f"unrecognized arguments: {' '.join(unknown)} (see train/train.py --help)")
    return parser.parse_args_into_dataclasses(args=rest)[0]


def check_args(args: TrainingArguments) -> None:
    if args.dataset not in ("autopet", "brain_tumour"):
        raise UserInputError(f"--dataset {args.dataset!r}; expected autopet or brain_tumour")
    if args.mixed_precision not in ("no", "bf16", "fp16"):
        raise UserInputError(f"--mixed_precision {args.mixed_precision!r}; expected no, bf16 or fp16")
    for name in ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "eval_steps", "checkpointing_steps", "patches_per_volume"):
        if getattr(args, name) < 1:
            raise UserInputError(f"--{name} is {getattr(args, name)}; expected a positive integer")
    if not 0 <= args.fold < args.num_folds:
        raise UserInputError(f"--fold {args.fold} is out of range; expected 0..{args.num_folds - 1} for --num_folds {args.num_folds}")
    if args.optimizer not in ("adam", "adamw", "sgd"):
        raise UserInputError(f"--optimizer {args.optimizer!r}; expected adam, adamw or sgd")
    if args.push_to_hub and not args.hub_model_id:
        raise UserInputError("--push_to_hub needs --hub_model_id NS/NAME")


def build_config(args: TrainingArguments):
    from mirror_unet_hf import MirrorUNetConfig

    overrides = {}
    if args.model_overrides:
        try:
            overrides = json.loads(args.model_overrides)
        except json.JSONDecodeError as error:
            raise UserInputError(f"--model_overrides is not a JSON object ({error})") from None
        if not isinstance(overrides, dict):
            raise UserInputError("--model_overrides must be a JSON object of config fields")
    for name in ("lambda_seg", "lambda_rec", "lambda_cls"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.patch_size is not None:
        overrides["patch_size"] = list(args.patch_size)
    try:
        config = MirrorUNetConfig.from_preset(args.preset, **overrides)
    except (ValueError, *CONFIG_ERRORS) as error:  # unknown preset, or a config validator naming the bad value
        raise UserInputError(one_line(error)) from None
    expected = {"autopet": {"ct", "pet"}, "brain_tumour": {"flair", "t1w", "t1gd", "t2w"}}[args.dataset]
    if not set(config.modalities) <= expected:
        raise UserInputError(
            f"--preset {args.preset} reads {', '.join(config.modalities)}, which the {args.dataset} dataset does not have"
        )
    return config


# ---------------------------------------------------------------------------------------------- output folder


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint folder appears only once fully written)."""
    folder = output_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(args: TrainingArguments) -> Path | None:
    if not args.resume_from_checkpoint:
        return None
    if args.resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(Path(args.output_dir))
        return checkpoints[-1] if checkpoints else None  # nothing saved yet: start from scratch
    path = Path(args.resume_from_checkpoint)
    if not (path / "trainer_state.json").is_file():
        raise UserInputError(f"--resume_from_checkpoint {path} is not a checkpoint (no trainer_state.json); expected <output_dir>/checkpoints/step_N")
    return path


def check_output_dir(args: TrainingArguments, resuming: bool) -> None:
    output = Path(args.output_dir)
    if not output.parent.exists():
        raise UserInputError(f"--output_dir {output}: folder {output.parent} does not exist")
    if output.exists() and any(output.iterdir()) and not resuming and not args.overwrite_output_dir:
        raise UserInputError(
            f"--output_dir {output} is not empty; pass --resume_from_checkpoint latest to continue that run or "
            "--overwrite_output_dir to start a new one there"
        )


def clear_previous_run(output: Path) -> None:
    """A new run in a used output_dir (--overwrite_output_dir): remove what the previous run wrote, so its
    checkpoints are neither overwritten in place nor resumed by a later `--resume_from_checkpoint latest`."""
    for name in ("checkpoints", "best", "final", "trainer_state.json"):
        path = output / name
        if path.is_dir():
            doomed = output / f".{name}.previous-run"
            shutil.rmtree(doomed, ignore_errors=True)
            os.replace(path, doomed)
            shutil.rmtree(doomed)
        elif path.exists():
            path.unlink()


# ---------------------------------------------------------------------------------------------- data


def training_data(args: TrainingArguments, config, accelerator):
    """DatasetDict of the run (phantoms generated on the main process first when there is no data_dir)."""
    from mirror_unet_hf.data import load_mirror_dataset, make_phantoms

    output = Path(args.output_dir).resolve()
    data_dir = args.data_dir
    if data_dir is None:
        layout = args.dataset
        shape = "x".join(map(str, args.phantom_shape)) if args.phantom_shape else "default"
        data_dir = args.phantom_dir or str(output.parent / "phantom-cache" / f"{layout}-n{args.phantom_count}-s{args.phantom_seed}-{shape}")
        folder = "FDG-PET-CT-Lesions" if layout == "autopet" else "Task01_BrainTumour"
        if accelerator.is_main_process and not (Path(data_dir) / folder).exists():
            accelerator.print(f"Generating {args.phantom_count} {layout} phantoms in {data_dir}")
            make_phantoms(layout, data_dir, args.phantom_count, args.phantom_seed, shape=args.phantom_shape)
        accelerator.wait_for_everyone()
    cache_dir = args.cache_dir or str(output.parent / "datasets-cache")
    with accelerator.main_process_first():
        dataset = load_mirror_dataset(args.dataset, data_dir, fold=args.fold, num_folds=args.num_folds, cache_dir=cache_dir,
                                      skip_bad=args.skip_bad)
    if args.max_train_studies:
        dataset["train"] = dataset["train"].select(range(min(args.max_train_studies, len(dataset["train"]))))
    if len(dataset["train"]) == 0:
        raise UserInputError(f"fold {args.fold} leaves no training studies in {data_dir}")
    return dataset, data_dir


# ---------------------------------------------------------------------------------------------- training


def make_optimizer(args: TrainingArguments, parameters):
    import torch

    if args.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=args.learning_rate, momentum=0.99, nesterov=True, weight_decay=args.weight_decay)
    kind = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    return kind(parameters, lr=args.learning_rate, weight_decay=args.weight_decay)


def collate_tensors(items: list[dict]) -> dict:
    """Stack the tensor fields of a batch (case ids stay behind: Accelerate dispatches tensors only)."""
    import torch

    return {key: torch.stack([item[key] for item in items]) for key in ("pixel_values", "labels", "class_labels")}


def fission_only_loss(out, config, step: int, seed: int):
    """Valindria et al.: one branch, chosen by (seed, step) identically on every process, is trained;
    the other terms enter with weight 0 so every parameter takes part in the backward pass."""
    import torch

    trainable = [b for b in config.branches if b["task"] != "none"]
    chosen = trainable[int(torch.randint(len(trainable), (1,), generator=torch.Generator().manual_seed(seed * 100003 + step)))]
    key = f"{chosen['name']}/{chosen['task']}"
    weight = config.lambda_seg if chosen["task"] == "segmentation" else config.lambda_rec
    return weight * out.loss_terms[key] + 0.0 * out.loss


def main(argv: list[str] | None = None) -> int:
    """User mistakes print one line and exit 2 (`--debug` shows the traceback); internal errors keep theirs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    try:
        return train(parse_args(argv))
    except (UserInputError, *CONFIG_ERRORS) as error:
        if debug:
            raise
        print(f"train.py: error: {one_line(error)}", file=sys.stderr)
        return 2


def train(args: TrainingArguments) -> int:
    check_args(args)
    config = build_config(args)
    resume = resolve_resume(args)
    check_output_dir(args, resuming=resume is not None or args.resume_from_checkpoint == "latest")

    import torch
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    from mirror_unet_hf import MirrorUNetModel
    from mirror_unet_hf.data import MirrorPatchDataset, prepare_studies
    from mirror_unet_hf.sliding_window import SlidingWindowSettings
    from mirror_unet_hf.validation import selection_score, summarise, validate

    output = Path(args.output_dir)
    trackers = [] if args.report_to == "none" else args.report_to
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "logs")),
        step_scheduler_with_optimizer=False,  # the LR schedule counts optimizer updates, whatever the process count
    )
    set_seed(args.seed)

    dataset, data_dir = training_data(args, config, accelerator)
    if accelerator.is_main_process:  # only once the data is known to be usable
        output.mkdir(parents=True, exist_ok=True)
        if resume is None and args.overwrite_output_dir:
            clear_previous_run(output)
    accelerator.wait_for_everyone()
    train_set = MirrorPatchDataset(
        dataset["train"], config, config.patch_size, args.patches_per_volume, tuple(args.pos_neg_ratio), seed=args.seed
    )
    validation = prepare_studies(dataset["validation"], config)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=args.per_device_train_batch_size, num_workers=args.num_workers, drop_last=True,
        collate_fn=collate_tensors,
    )

    model = MirrorUNetModel(config)
    if args.sync_batchnorm and accelerator.num_processes > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = make_optimizer(args, model.parameters())
    decay_every = args.lr_decay_every or max(1, round(args.max_steps * 250 / 400))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=decay_every, gamma=args.lr_decay_factor)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    # The scheduler's state goes into trainer_state.json: Accelerate would pickle a registered object and
    # unpickle it with the full unpickler on resume, which runs any code a checkpoint file carries.

    global_batch = args.per_device_train_batch_size * accelerator.num_processes
    # epoch and batches_in_epoch locate the data stream exactly, so a resumed run sees the same batches
    state = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "best_score": None, "best_step": None, "history": []}
    if resume is not None:
        accelerator.load_state(str(resume))
        state = json.loads((resume / "trainer_state.json").read_text())
        if "scheduler" not in state:
            raise UserInputError(f"--resume_from_checkpoint {resume}: written by an older train.py (scheduler state in a pickle); start a new run")
        scheduler.load_state_dict(state.pop("scheduler"))
        accelerator.print(f"Resumed from {resume} at step {state['step']}")
    if accelerator.is_main_process and trackers:
        accelerator.init_trackers("mirror-unet", config={k: str(v) for k, v in dataclasses.asdict(args).items()})

    settings = SlidingWindowSettings(overlap=args.overlap, precision="bf16" if args.mixed_precision == "bf16" else "fp32", device=str(next(accelerator.unwrap_model(model).parameters()).device))
    from mirror_unet_hf.data.builder import find_dataset_root
    from mirror_unet_hf.data.phantoms import is_phantom_dataset

    phantoms = args.data_dir is None or is_phantom_dataset(find_dataset_root(args.dataset, data_dir))
    run_info = {**dataclasses.asdict(args), "data_dir": str(data_dir), "phantoms": phantoms,
                "num_processes": accelerator.num_processes, "global_batch_size": global_batch,
                "train_studies": len(dataset["train"]), "validation_studies": len(dataset["validation"])}

    def save_model(folder_name: str, metrics: dict | None) -> None:
        if not accelerator.is_main_process:
            return
        staging = output / f".{folder_name}.tmp"
        if staging.exists():
            shutil.rmtree(staging)
        accelerator.unwrap_model(model).save_pretrained(staging)
        atomic_write_json(staging / "training_args.json", run_info)
        if metrics is not None:
            atomic_write_json(staging / "metrics.json", {
                "task": args.dataset, "dataset": f"{args.dataset}-phantoms" if phantoms else args.dataset,
                "split": f"validation (fold {args.fold} of {args.num_folds})", "num_studies": int(metrics.get("num_studies", 0)),
                "step": state["step"], "metrics": {k: v for k, v in metrics.items() if k != "num_studies"},
            })
        replace_folder(staging, output / folder_name)

    def run_validation() -> dict:
        model.eval()
        bare = accelerator.unwrap_model(model)
        with accelerator.split_between_processes(list(range(len(validation)))) as mine:
            rows = validate(bare, (validation[i] for i in mine), args.dataset, settings)
        from accelerate.utils import gather_object

        rows = gather_object(rows)
        model.train()
        return summarise(sorted(rows, key=lambda r: r["case_id"]))

    def save_checkpoint() -> None:
        folder = output / "checkpoints"
        staging = folder / f".step_{state['step']}.tmp"
        if accelerator.is_main_process:
            folder.mkdir(exist_ok=True)
            if staging.exists():
                shutil.rmtree(staging)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        if accelerator.is_main_process:
            atomic_write_json(staging / "trainer_state.json", {**state, "scheduler": scheduler.state_dict()})
            replace_folder(staging, folder / f"step_{state['step']}")  # a resume from an older checkpoint re-saves
            checkpoints = list_checkpoints(output)
            for old in checkpoints[: max(0, len(checkpoints) - (args.checkpoints_total_limit or len(checkpoints)))]:
                doomed = old.with_name(f".{old.name}.deleting")  # renamed first: a kill mid-delete leaves no step_N
                shutil.rmtree(doomed, ignore_errors=True)
                os.replace(old, doomed)
                shutil.rmtree(doomed)
        accelerator.wait_for_everyone()

    model.train()
    progress = tqdm(total=args.max_steps, initial=state["step"], disable=not accelerator.is_local_main_process, desc="training")
    started, window_loss, window_steps = time.perf_counter(), 0.0, 0
    last_metrics = {k: v for k, v in state["history"][-1].items() if k != "step"} if state["history"] else None
    while state["step"] < args.max_steps:
        batches = loader
        if state["batches_in_epoch"]:
            batches = accelerator.skip_first_batches(loader, state["batches_in_epoch"])
        # Accelerate's loaders call dataset.set_epoch(<times this loader object was iterated>) when iterated:
        # set that counter, or a resumed run (a fresh loader) would replay epoch 0's patches.
        batches.set_epoch(state["epoch"])
        train_set.set_epoch(state["epoch"])
        for batch in batches:
            state["batches_in_epoch"] += 1
            with accelerator.accumulate(model):
                out = model(batch["pixel_values"], labels=batch["labels"], class_labels=batch["class_labels"])
                loss = fission_only_loss(out, config, state["step"], args.seed) if args.fission_only else out.loss
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state["step"] += 1
            window_loss += accelerator.reduce(loss.detach(), reduction="mean").item()
            window_steps += 1
            progress.update(1)
            if state["step"] % args.logging_steps == 0 or state["step"] == args.max_steps:
                rate = window_steps / (time.perf_counter() - started)
                progress.set_postfix(loss=f"{window_loss / window_steps:.4f}", steps_per_s=f"{rate:.2f}")
                accelerator.log({"train/loss": window_loss / window_steps, "train/lr": scheduler.get_last_lr()[0],
                                 **{f"train/{k}": v.item() for k, v in out.loss_terms.items()}}, step=state["step"])
                started, window_loss, window_steps = time.perf_counter(), 0.0, 0
            if state["step"] % args.eval_steps == 0 or state["step"] == args.max_steps:
                metrics = run_validation()
                score = selection_score(metrics, args.dataset)
                accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=state["step"])
                state["history"].append({"step": state["step"], **metrics})
                if accelerator.is_main_process:  # through tqdm, so the line does not break the progress bar
                    progress.write(f"step {state['step']}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
                if state["best_score"] is None or score > state["best_score"]:
                    state["best_score"], state["best_step"] = score, state["step"]
                    save_model("best", metrics)
                accelerator.wait_for_everyone()
                last_metrics = metrics
            if state["step"] % args.checkpointing_steps == 0 or state["step"] == args.max_steps:
                save_checkpoint()
            if state["step"] >= args.max_steps:
                break
        else:  # the epoch's data is exhausted
            state["epoch"] += 1
            state["batches_in_epoch"] = 0
    progress.close()
    save_model("final", last_metrics)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(output / "trainer_state.json", state)
    accelerator.end_training()
    if args.push_to_hub and accelerator.is_main_process:
        from mirror_unet_hf.hub import push_checkpoint

        folder = output / "best" if (output / "best").exists() else output / "final"
        # --hub_model_id names the repo for this run on purpose: a new version over older weights is intended
        url = push_checkpoint(folder, args.hub_model_id, metrics_path=folder / "metrics.json" if (folder / "metrics.json").exists() else None,
                              overwrite=True)
        accelerator.print(f"Pushed {folder} to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
