"""The flags of `train/train.py`: the `TrainingArguments` dataclass, `--config FILE.yaml` parsing, the checks
that need no data, and the model config the flags describe.

A mistake in any of them raises `UserInputError` naming the flag and what was expected, before anything is
loaded or written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from ..configuration_mirror_unet import MirrorUNetConfig
from ..data.augmentation import AUGMENTATIONS
from ..errors import CONFIG_ERRORS, UserInputError, one_line
from ..tasks import get_task, task_names


@dataclass
class TrainingArguments:
    """Every flag of `train/train.py`; a `--config FILE.yaml` may set any of them (flags win)."""

    preset: str = field(default="autopet-v3", metadata={"help": "model preset (see `mirror-unet presets`)"})
    model_overrides: str | None = field(
        default=None,
        metadata={
            "help": "JSON object of config fields to override, e.g. "
            '\'{"channels": [8, 16, 32, 64, 128], "norm": "instance"}\''
        },
    )
    dataset: str = field(
        default="autopet", metadata={"help": f"a task name (mirror_unet_hf.tasks): {', '.join(task_names())}"}
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": "dataset folder (in the task's layout); empty = generate phantoms into --phantom_dir"},
    )
    phantom_dir: str | None = field(
        default=None,
        metadata={
            "help": "where phantoms are generated (default: <output_dir>/../phantom-cache/<layout>-n<N>-s<seed>)"
        },
    )
    phantom_count: int = field(default=24, metadata={"help": "number of phantom studies to generate"})
    phantom_seed: int = field(default=0, metadata={"help": "seed of the phantom generator"})
    phantom_shape: list[int] | None = field(
        default=None, metadata={"help": "phantom volume shape (default: the generator's)"}
    )
    cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "cache of the prepared studies, as `mirror-unet prepare --cache_dir` writes it "
            "(default: <output_dir>/../datasets-cache)"
        },
    )
    preprocessing_num_workers: int = field(
        default=1, metadata={"help": "processes preparing studies not in the cache yet (`prepare --num_proc`)"}
    )
    output_dir: str = field(default="outputs/mirror-unet", metadata={"help": "where checkpoints, best/ and final/ go"})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "allow a new run in a non-empty output_dir"})
    fold: int = field(default=0, metadata={"help": "validation fold"})
    num_folds: int = field(default=5, metadata={"help": "number of patient-grouped folds"})
    patch_size: list[int] | None = field(
        default=None, metadata={"help": "training patch size (default: the preset's, 96³)"}
    )
    patches_per_volume: int = field(default=4, metadata={"help": "patches drawn per study and epoch"})
    pos_neg_ratio: list[float] = field(
        default_factory=lambda: [2.0, 1.0], metadata={"help": "positive:negative patch centres"}
    )
    positives_only: bool = field(
        default=False,
        metadata={"help": "train on lesion-positive studies only (label with foreground), as the authors' code does"},
    )
    patches_from_one_study: bool = field(
        default=False,
        metadata={
            "help": "each device's batch is the patches of one study (the authors' code: 4 patches of one study per "
            "step); needs --per_device_train_batch_size equal to --patches_per_volume"
        },
    )
    balance_groups: bool = field(
        default=False,
        metadata={"help": "draw equally many training studies of every group per epoch (autopet3: fdg and psma)"},
    )
    clip_intensities: bool = field(
        default=True,
        metadata={
            "help": "clip training inputs to the intensity windows; false scales them without clipping, as the "
            "authors' training patches (validation and inference always clip)"
        },
    )
    per_device_train_batch_size: int = field(default=2, metadata={"help": "patches per device and step"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "steps accumulated per optimizer update"})
    optimizer: str = field(
        default="adam", metadata={"help": "adam (paper), adamw, or sgd (momentum 0.99, nesterov, as nnU-Net)"}
    )
    learning_rate: float = field(default=1e-3, metadata={"help": "learning rate (paper, Adam: 1e-3)"})
    weight_decay: float = field(default=1e-5, metadata={"help": "weight decay (paper: 1e-5)"})
    lr_decay_every: int | None = field(
        default=None,
        metadata={
            "help": "multiply the LR by --lr_decay_factor every N updates "
            "(paper: every 250 of 400 epochs; default: 5/8 of max_steps)"
        },
    )
    lr_decay_factor: float = field(default=0.1, metadata={"help": "step-decay factor"})
    max_steps: int = field(default=1000, metadata={"help": "optimizer updates to train for"})
    lambda_seg: float | None = field(
        default=None, metadata={"help": "segmentation loss weight (default: the preset's, 1.0)"}
    )
    lambda_rec: float | None = field(default=None, metadata={"help": "reconstruction loss weight (default: 0.1)"})
    lambda_cls: float | None = field(default=None, metadata={"help": "classification loss weight (default: 0.1)"})
    seed: int = field(default=42, metadata={"help": "seed of weights, sampling and dropout"})
    mixed_precision: str | None = field(
        default=None,
        metadata={
            "help": "no, bf16 or fp16; default: what `accelerate launch --mixed_precision` or `accelerate config` "
            "sets (else no)"
        },
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "start from this checkpoint (folder or Hub id) instead of random weights; its heads must be "
            "the --preset's (see README)"
        },
    )
    max_grad_norm: float | None = field(
        default=None, metadata={"help": "clip the gradient norm to this value (default: no clipping)"}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations in the backward pass: less memory, slower steps"}
    )
    augment: str = field(
        default="none",
        metadata={
            "help": "patch augmentation: none, spatial (the authors' --with_DA: rotation ±30°, scaling, flips) or "
            "spatial+intensity (plus nnU-Net's intensity augmentations)"
        },
    )
    sync_batchnorm: bool = field(
        default=False, metadata={"help": "convert BatchNorm to SyncBatchNorm for multi-process runs"}
    )
    fission_only: bool = field(
        default=False, metadata={"help": "Valindria et al.: each step trains one randomly chosen branch only"}
    )
    eval_steps: int = field(default=200, metadata={"help": "validate every N updates (and at the end)"})
    checkpointing_steps: int = field(default=200, metadata={"help": "save a resumable checkpoint every N updates"})
    checkpoints_total_limit: int | None = field(default=3, metadata={"help": "keep at most this many checkpoints"})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "checkpoint folder or 'latest'"})
    overlap: float = field(
        default=0.25, metadata={"help": "sliding-window overlap in validation (the official decision fusion: 0.3)"}
    )
    num_workers: int = field(default=2, metadata={"help": "DataLoader workers"})
    report_to: str = field(
        default="tensorboard", metadata={"help": "Accelerate tracker(s): tensorboard, wandb, all or none"}
    )
    logging_steps: int = field(default=10, metadata={"help": "log the loss every N updates"})
    push_to_hub: bool = field(default=False, metadata={"help": "push best/ (or final/) to the Hub at the end"})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo id for --push_to_hub"})
    max_train_studies: int | None = field(
        default=None, metadata={"help": "use only the first N training studies (debugging)"}
    )
    skip_bad: bool = field(
        default=False,
        metadata={
            "help": "leave out unreadable studies when building the dataset (each is listed) instead of stopping"
        },
    )


class _RaisingParser(HfArgumentParser):
    """Usage errors become `UserInputError`, so the entry point prints them like every other mistake."""

    def error(self, message):
        raise UserInputError(message)


def read_config_file(path: str | Path) -> dict:
    """The settings of a `--config` YAML file, checked against the flag names; `model_overrides` may be a
    YAML mapping and comes back as JSON text, as the flag takes it."""
    path = Path(path)
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
    return values


def parse_args(argv: list[str] | None = None, description: str | None = None) -> TrainingArguments:
    """Flags, on top of an optional `--config FILE.yaml`; a mistake raises `UserInputError` (one line, exit 2
    at the entry point). `description` heads `--help`."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    parser = _RaisingParser(TrainingArguments, description=description)
    parser.add_argument(
        "--config", help="YAML file setting any of the flags below (flags given on the command line win)"
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of user errors")
    if known.config:
        parser.set_defaults(**read_config_file(known.config))
    _, unknown = parser.parse_known_args(rest)
    if unknown:
        raise UserInputError(f"unrecognized arguments: {' '.join(unknown)} (see train/train.py --help)")
    return parser.parse_args_into_dataclasses(args=rest)[0]


def check_args(args: TrainingArguments) -> None:
    """The checks of single flags and of flag combinations that need neither data nor model."""
    if args.dataset not in task_names():
        raise UserInputError(f"--dataset {args.dataset!r}; expected {' or '.join(task_names())}")
    if args.mixed_precision not in (None, "no", "bf16", "fp16"):
        raise UserInputError(f"--mixed_precision {args.mixed_precision!r}; expected no, bf16 or fp16")
    if args.augment not in AUGMENTATIONS:
        raise UserInputError(f"--augment {args.augment!r}; expected {', '.join(AUGMENTATIONS)}")
    if args.max_grad_norm is not None and not args.max_grad_norm > 0:
        raise UserInputError(f"--max_grad_norm is {args.max_grad_norm}; expected a positive number")
    positive = (
        "max_steps",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "eval_steps",
        "checkpointing_steps",
        "patches_per_volume",
        "preprocessing_num_workers",
    )
    for name in positive:
        if getattr(args, name) < 1:
            raise UserInputError(f"--{name} is {getattr(args, name)}; expected a positive integer")
    if args.patches_from_one_study and args.per_device_train_batch_size != args.patches_per_volume:
        raise UserInputError(
            f"--patches_from_one_study needs --per_device_train_batch_size equal to --patches_per_volume "
            f"(a batch is one study's patches); got {args.per_device_train_batch_size} and {args.patches_per_volume}"
        )
    if not 0 <= args.overlap < 1:
        raise UserInputError(f"--overlap is {args.overlap}; expected a fraction in [0, 1)")
    if not 0 <= args.fold < args.num_folds:
        raise UserInputError(
            f"--fold {args.fold} is out of range; expected 0..{args.num_folds - 1} for --num_folds {args.num_folds}"
        )
    if args.optimizer not in ("adam", "adamw", "sgd"):
        raise UserInputError(f"--optimizer {args.optimizer!r}; expected adam, adamw or sgd")
    if args.push_to_hub and not args.hub_model_id:
        raise UserInputError("--push_to_hub needs --hub_model_id NS/NAME")


def config_overrides(args: TrainingArguments) -> dict:
    """The config fields the flags set on top of the preset: `--model_overrides`, the loss weights and the
    patch size."""
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
    return overrides


def build_config(args: TrainingArguments) -> MirrorUNetConfig:
    """The model config of the run: `--preset` with the overrides, checked against the dataset's modalities."""
    try:
        config = MirrorUNetConfig.from_preset(args.preset, **config_overrides(args))
    except (ValueError, *CONFIG_ERRORS) as error:  # unknown preset, or a config validator naming the bad value
        raise UserInputError(one_line(error)) from None
    if not set(config.modalities) <= set(get_task(args.dataset).modalities):
        raise UserInputError(
            f"--preset {args.preset} reads {', '.join(config.modalities)}, "
            f"which the {args.dataset} dataset does not have"
        )
    return config
