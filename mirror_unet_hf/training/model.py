"""The network a training run starts from: random weights from the run's config, or the weights of a checkpoint
(`--model_name_or_path`, a folder or a Hub id) whose architecture is the run's.

Fine-tuning keeps the run's config (`--preset` with `--model_overrides`, the loss weights, the patch size): the
checkpoint must have the same inputs, branches, tasks, heads and backbone, so that every weight has its place.
A difference there is a `UserInputError` naming the fields (pass the checkpoint's preset and overrides); training
settings such as loss weights, patch size, dropout or intensity windows may differ and come from the run.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..configuration_mirror_unet import MirrorUNetConfig
from ..errors import CONFIG_ERRORS, UserInputError, one_line
from ..modeling_mirror_unet import MirrorUNetModel
from .arguments import TrainingArguments

# The config fields that decide which weights a Mirror U-Net has and what they mean.
ARCHITECTURE_FIELDS = (
    "modalities",
    "label_names",
    "branches",
    "shared_layers",
    "bottleneck_decoder",
    "classification_head",
    "final_mask_rule",
    "final_mask_branches",
    "learnable_fusion_weights",
    "channels",
    "strides",
    "num_res_units",
    "kernel_size",
    "up_kernel_size",
    "norm",
    "norm_groups",
    "act",
)
HUB_CACHE_FOLDER = re.compile(r"^models--(?P<namespace>[^/]+?)--(?P<name>[^/]+)$")


def architecture_differences(base: MirrorUNetConfig, config: MirrorUNetConfig) -> list[str]:
    """The `ARCHITECTURE_FIELDS` in which two configs differ (a field one of them lacks counts as different)."""
    missing = object()
    return [name for name in ARCHITECTURE_FIELDS if getattr(base, name, missing) != getattr(config, name, missing)]


def load_base_config(args: TrainingArguments, config: MirrorUNetConfig) -> MirrorUNetConfig | None:
    """The config of `--model_name_or_path` (None without it), checked to have the run's architecture; raises
    `UserInputError` naming the fields that differ. Reads only `config.json`, so a mistake shows before any data."""
    if not args.model_name_or_path:
        return None
    try:
        base = MirrorUNetConfig.from_pretrained(args.model_name_or_path)
    except (OSError, ValueError, *CONFIG_ERRORS) as error:
        raise UserInputError(
            f"--model_name_or_path {args.model_name_or_path}: no Mirror U-Net config there ({one_line(error)})"
        ) from None
    different = architecture_differences(base, config)
    if different:
        shown = "; ".join(
            f"{name}: {getattr(base, name, None)!r} vs {getattr(config, name, None)!r}" for name in different
        )
        raise UserInputError(
            f"--model_name_or_path {args.model_name_or_path} (preset {base.preset}) does not have the architecture of "
            f"--preset {args.preset}: {shown} (checkpoint vs run); pass the checkpoint's preset and --model_overrides"
        )
    return base


def base_model_id(model_name_or_path: str | None) -> str | None:
    """The Hub id a run starts from, for the model card's `base_model`: the argument itself when it is not a
    local folder, the repo of a folder inside the Hugging Face cache, else None (a local checkpoint)."""
    if not model_name_or_path:
        return None
    path = Path(model_name_or_path)
    if not path.exists():
        return model_name_or_path
    for part in path.resolve().parts:
        match = HUB_CACHE_FOLDER.match(part)
        if match:
            return f"{match['namespace']}/{match['name']}"
    return None


def initial_model(args: TrainingArguments, config: MirrorUNetConfig) -> MirrorUNetModel:
    """The model the run trains: `--model_name_or_path`'s weights in the run's config, or a new one; with
    `--gradient_checkpointing` its U-Net levels recompute their activations in the backward pass."""
    if args.model_name_or_path:
        model, info = MirrorUNetModel.from_pretrained(args.model_name_or_path, config=config, output_loading_info=True)
        absent = sorted(info["missing_keys"]) + sorted(info["unexpected_keys"])
        if absent or info.get("mismatched_keys"):
            raise UserInputError(
                f"--model_name_or_path {args.model_name_or_path}: its weights do not fit the run's model "
                f"(missing or unexpected: {', '.join(absent[:5]) or 'none'}; mismatched: "
                f"{len(info.get('mismatched_keys') or [])})"
            )
    else:
        model = MirrorUNetModel(config)
    if args.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    return model


def count_trainable(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
