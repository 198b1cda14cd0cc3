"""The model card of a Mirror U-Net checkpoint, described from the checkpoint's own config and run files.

`model_card_context` gathers the card metadata (``model-index`` evaluation results included) and the
variables of ``mirror_unet_hf/hub_cards/model_card.md.j2``; `build_model_card` renders them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..configuration_mirror_unet import PRESETS, MirrorUNetConfig
from ..errors import UserInputError
from ..tasks import get_task, list_tasks, task_for_modalities, task_names
from .checkpoint_files import (
    METRICS_FILE,
    TRAINING_ARGS_FILE,
    WEIGHTS_FILE,
    check_checkpoint_folder,
    count_parameters,
    load_checkpoint_config,
    read_metrics,
    read_training_args,
    trained_on_phantoms,
)
from .client import REPO_ID

CARD_TEMPLATES = Path(__file__).parents[1] / "hub_cards"
# Where the package's source lives (pyproject.toml's [project.urls] Repository; the card's install line).
REPOSITORY_URL = "https://github.com/mirror-unet-hf/mirror-unet-hf"
MODEL_CARD_TEMPLATE = CARD_TEMPLATES / "model_card.md.j2"

ACTIVATION_NAMES = {"prelu": "PReLU", "relu": "ReLU", "leakyrelu": "LeakyReLU", "gelu": "GELU"}


def _domain(config: MirrorUNetConfig) -> dict:
    """The imaging domain of the model's inputs, from the first task whose studies have every modality."""
    task = task_for_modalities(config.modalities)
    if task is None:
        return {"name": "multimodal", "tag": None, "task": None}
    return {"name": task.domain, "tag": task.domain_tag, "task": task.name}


def _metric_unit_label(name: str) -> tuple[str, str]:
    """(what the card calls a metric, its unit), from the task that defines it."""
    return next((task.metric_labels[name] for task in list_tasks() if name in task.metric_labels), (name, ""))


# ---------------------------------------------------------------------------------------------
# How values are shown
# ---------------------------------------------------------------------------------------------


def _dataset_id(value: Any) -> str | None:
    """A data set name fit for card metadata: Hub ids as they are, local paths reduced to their last part."""
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip()
    if REPO_ID.fullmatch(value) and not Path(value).exists():
        return value
    return Path(value.rstrip("/\\")).name or value


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    numbers = isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    )
    if numbers:
        return " × ".join(f"{v:g}" for v in value) if value else "–"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def _final_mask_text(config: MirrorUNetConfig) -> str:
    branches = config.final_mask_branches
    if config.final_mask_rule == "branch":
        return f"the segmentation of branch `{branches[0]}`"
    if config.final_mask_rule == "union":
        return (
            "the union of the segmentations of branches "
            + ", ".join(f"`{b}`" for b in branches)
            + " (a voxel is foreground where any of them says so; their classes are concatenated in branch order)"
        )
    weights = " + ".join(f"{w:g}·`{b}`" for w, b in zip(config.fusion_weights, branches, strict=True))
    learnable = (
        " (weights learned during training, initialised at these values)" if config.learnable_fusion_weights else ""
    )
    return f"the weighted mean of branch logits, {weights}{learnable} (decision fusion)"


def _shared_text(config: MirrorUNetConfig) -> str:
    shared = list(config.shared_layers)
    if not shared:
        return "nothing: the branches are independent U-Nets (late fusion)"
    if shared == ["bottleneck"]:
        return "only the bottleneck (the paper's default)"
    return ", ".join(f"`{layer}`" for layer in shared)


def _input_rows(config: MirrorUNetConfig) -> list[dict]:
    windows = config.intensity_windows or {}
    rows = []
    for index, modality in enumerate(config.modalities):
        if modality in windows:
            low, high = windows[modality]
            normalisation = f"clip to [{low:g}, {high:g}], scale to [0, 1]"
        else:
            normalisation = "z-score over non-zero voxels"
        rows.append({"channel": index, "modality": modality, "normalisation": normalisation})
    return rows


def _metric_label(name: str) -> str:
    label, unit = _metric_unit_label(name)
    return label + (f" ({unit})" if unit else "")


def _metric_rows(metrics: dict) -> list[dict]:
    rows = []
    for name, value in metrics["metrics"].items():
        unit = _metric_unit_label(name)[1]
        shown = "n/a" if value is None else (f"{value:.2f}" if unit else f"{value:.4f}")
        rows.append({"name": name, "label": _metric_label(name), "value": shown})
    return rows


def _eval_results(metrics: dict) -> list[EvalResult]:
    dataset = _dataset_id(metrics["dataset"])
    task_name = get_task(metrics["task"]).segmentation_name
    titled = get_task(dataset).title if dataset in task_names() else dataset
    dataset_name = metrics["dataset"] if metrics["dataset"] != dataset else titled
    return [
        EvalResult(
            task_type="image-segmentation",
            task_name=task_name,
            dataset_type=dataset,
            dataset_name=dataset_name,
            dataset_split=metrics["split"],
            metric_type=name,
            metric_name=_metric_label(name),
            metric_value=float(value),
        )
        for name, value in metrics["metrics"].items()
        if value is not None
    ]


# ---------------------------------------------------------------------------------------------
# The card
# ---------------------------------------------------------------------------------------------


def _run_files(folder: Path, metrics_path: str | Path | None) -> tuple[Path | None, dict | None, dict | None]:
    """(metrics file, its metrics, training arguments) of a checkpoint folder; None where absent."""
    if metrics_path is None and (folder / METRICS_FILE).is_file():
        metrics_path = folder / METRICS_FILE
    metrics = read_metrics(metrics_path) if metrics_path is not None else None
    args_file = folder / TRAINING_ARGS_FILE
    training_args = read_training_args(args_file) if args_file.is_file() else None
    return metrics_path, metrics, training_args


def _check_metrics_fit(metrics: dict | None, metrics_path: Path | None, config: MirrorUNetConfig) -> None:
    domain = _domain(config)
    if metrics and domain["task"] and metrics["task"] != domain["task"]:
        raise UserInputError(
            f"{metrics_path}: task {metrics['task']!r} does not fit this {domain['name']} model "
            f"(modalities {', '.join(config.modalities)}); expected task {domain['task']!r}"
        )


def _card_data(name: str, config: MirrorUNetConfig, metrics: dict | None, training_args: dict | None) -> ModelCardData:
    """The card's YAML metadata: tags, data sets and the ``model-index`` evaluation results."""
    domain = _domain(config)
    phantoms = trained_on_phantoms(training_args)
    preset = config.preset if config.preset in PRESETS else None
    # a phantom run's `dataset` names the layout it imitates (e.g. autopet), not data it saw
    trained_on = None if phantoms else _dataset_id((training_args or {}).get("dataset"))
    datasets = [d for d in (trained_on, _dataset_id((metrics or {}).get("dataset"))) if d]
    datasets = list(dict.fromkeys(datasets))
    tags = ["mirror-unet", "medical-imaging"] + ([domain["tag"]] if domain["tag"] else [])
    tags += ["3d", "segmentation", "multi-task-learning"]
    tags += [t for t in (preset, domain["task"] and domain["task"].replace("_", "-")) if t]
    if phantoms:
        tags.append("synthetic-data")
    scored = bool(metrics) and any(v is not None for v in metrics["metrics"].values())
    return ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="image-segmentation",
        tags=list(dict.fromkeys(tags)),
        datasets=datasets or None,
        metrics=list(metrics["metrics"]) if metrics else None,
        model_name=name,
        eval_results=_eval_results(metrics) if scored else None,
        # the Hub id a fine-tuned run started from (train.py --model_name_or_path); None for a local folder
        base_model=(training_args or {}).get("base_model") or None,
    )


def _architecture_context(config: MirrorUNetConfig, parameters: int) -> dict:
    """Template variables describing the network and its input contract."""
    activation = ACTIVATION_NAMES.get(config.act, config.act)
    return {
        "domain": _domain(config)["name"],
        "parts": config.describe(),
        "shared": _shared_text(config),
        "final_mask": _final_mask_text(config),
        "final_classes": [
            {"index": k, "name": n, "value": v}
            for k, (n, v) in enumerate(zip(config.final_class_names, config.final_label_values, strict=True))
        ],
        "backbone": (
            f"channels {_format_value(config.channels)}, strides {_format_value(config.strides)}, "
            f"{config.num_res_units} residual sub-units, {config.norm} norm, {activation}"
        ),
        "parameters": f"{parameters:,} ({parameters / 1e6:.2f} M)",
        "inputs": _input_rows(config),
        "modalities": list(config.modalities),
        "target_spacing": _format_value(config.target_spacing) + " mm" if config.target_spacing else None,
        "reference_modality": config.reference_modality,
        "total_stride": config.total_stride,
        "patch_size": _format_value(config.patch_size),
        "example_shape": ", ".join(str(s) for s in [1, len(config.modalities), *config.patch_size]),
        **_pipeline_context(config),
    }


def _pipeline_context(config: MirrorUNetConfig) -> dict:
    """Template variables of the card's pipeline example: the install source, one study's files, the outputs."""
    from ..image_processing_mirror_unet import MirrorUNetImageProcessor
    from ..pipeline_mirror_unet import SUV_MODALITY

    processor = MirrorUNetImageProcessor.from_model_config(config)
    files = {m: (processor.study_file_names.get(m) or [f"{m}.nii.gz"])[0] for m in config.modalities}
    return {
        "repository_url": REPOSITORY_URL,
        "example_inputs": "{" + ", ".join(f'"{m}": "{name}"' for m, name in files.items()) + "}",
        "lesion_table": SUV_MODALITY in config.modalities,
    }


def _run_context(metrics: dict | None, training_args: dict | None) -> dict:
    """Template variables describing the training run and its evaluation."""
    return {
        "phantoms": trained_on_phantoms(training_args),
        "training_args": [{"key": k, "value": _format_value(v)} for k, v in (training_args or {}).items()],
        "training_dataset": _dataset_id((training_args or {}).get("dataset")),
        "metrics": metrics,
        "metric_rows": _metric_rows(metrics) if metrics else [],
        "evaluated_on_phantoms": bool(metrics) and "phantom" in metrics["dataset"].lower(),
    }


def model_card_context(
    model_dir: str | Path,
    repo_id: str,
    *,
    metrics_path: str | Path | None = None,
    revision: str | None = None,
) -> tuple[ModelCardData, dict]:
    """The card metadata and the template variables of a checkpoint folder's model card.

    Metrics come from `metrics_path`, else from the folder's ``metrics.json`` when present; training
    settings from the folder's ``training_args.json`` when present.
    """
    folder = check_checkpoint_folder(model_dir)
    config = load_checkpoint_config(folder)
    parameters = count_parameters(config, folder / WEIGHTS_FILE)
    metrics_path, metrics, training_args = _run_files(folder, metrics_path)
    _check_metrics_fit(metrics, metrics_path, config)
    name = repo_id.split("/")[-1]
    preset = config.preset if config.preset in PRESETS else None
    context = {
        "repo_id": repo_id,
        "model_name": name,
        "revision": revision if revision and revision != "main" else None,
        "preset": preset,
        "preset_description": PRESETS[preset]["description"] if preset else None,
        **_architecture_context(config, parameters),
        **_run_context(metrics, training_args),
    }
    return _card_data(name, config, metrics, training_args), context


def build_model_card(
    model_dir: str | Path,
    repo_id: str,
    *,
    metrics_path: str | Path | None = None,
    revision: str | None = None,
) -> ModelCard:
    """The model card (README.md) of a checkpoint folder, from ``hub_cards/model_card.md.j2``."""
    card_data, context = model_card_context(model_dir, repo_id, metrics_path=metrics_path, revision=revision)
    return render_model_card(card_data, context)


def render_model_card(card_data: ModelCardData, context: dict) -> ModelCard:
    """The model card of `model_card_context`'s metadata and template variables."""
    return ModelCard.from_template(card_data, template_path=str(MODEL_CARD_TEMPLATE), **context)
