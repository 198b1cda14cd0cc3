"""Publish Mirror U-Net checkpoints and data sets on the Hugging Face Hub, each with a generated card.

`push_checkpoint` checks a `save_pretrained` folder, writes its model card (from
`mirror_unet_hf/hub_cards/model_card.md.j2`, described from the checkpoint's own config) into a staging
folder and uploads weights, config, remote code and card in one commit. `push_dataset` publishes a folder
(e.g. the phantom NIfTI tree) as a data set repo with a card from `hub_cards/dataset_card.md.j2`.
The user's folders are only ever read.

Files the training script writes into every checkpoint folder, read here when present:

``metrics.json`` — the validation result of the checkpoint::

    {"task": "autopet" | "brain_tumour",   # which metric set
     "dataset": str,                        # data set name or Hub id, e.g. "autopet" or "ns/phantoms"
     "split": "validation",
     "num_studies": int,                    # studies scored
     "metrics": {name: float | null}}       # AutoPET: dice, fpv_ml, fnv_ml; BrainTumour: dice_wt, dice_tc,
                                            # dice_et, hd95_wt, hd95_tc, hd95_et (mm); null = undefined

``training_args.json`` — a flat dict of the run's arguments, e.g.
``{"preset": "autopet-v3", "dataset": "phantoms", "max_steps": 2000, "learning_rate": 0.001,
"patch_size": [96, 96, 96], "phantoms": true, ...}``. Weights trained on synthetic phantoms are
recognised by ``"phantoms": true`` or a ``dataset`` containing "phantom"; their card says so plainly.
Keys that look like credentials (token, secret, password) are never published.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import torch
from huggingface_hub import (
    CommitOperationAdd,
    DatasetCard,
    DatasetCardData,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
    constants,
    get_session,
    get_token,
)
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RevisionNotFoundError
from safetensors import SafetensorError, safe_open

from .configuration_mirror_unet import AUTOPET_MODALITIES, BRATS_MODALITIES, PRESETS, MirrorUNetConfig
from .errors import UserInputError
from .files import NIFTI_SUFFIXES, is_pickle_file
from .modeling_mirror_unet import MirrorUNetModel

CARD_TEMPLATES = Path(__file__).parent / "hub_cards"
MODEL_CARD_TEMPLATE = CARD_TEMPLATES / "model_card.md.j2"
DATASET_CARD_TEMPLATE = CARD_TEMPLATES / "dataset_card.md.j2"

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CODE_FILES = ("configuration_mirror_unet.py", "modeling_mirror_unet.py")
METRICS_FILE = "metrics.json"
TRAINING_ARGS_FILE = "training_args.json"
CARD_FILE = "README.md"

DEFAULT_TIMEOUT = 60.0  # seconds without progress on one HTTP request before a push gives up
METRIC_TASKS = ("autopet", "brain_tumour")
# name -> (what the card calls it, unit)
METRIC_LABELS = {
    "dice": ("Dice", ""),
    "fpv_ml": ("False-positive volume", "ml"),
    "fnv_ml": ("False-negative volume", "ml"),
    "dice_wt": ("Dice, whole tumour", ""),
    "dice_tc": ("Dice, tumour core", ""),
    "dice_et": ("Dice, enhancing tumour", ""),
    "hd95_wt": ("HD95, whole tumour", "mm"),
    "hd95_tc": ("HD95, tumour core", "mm"),
    "hd95_et": ("HD95, enhancing tumour", "mm"),
}
TASK_DATASETS = {"autopet": "AutoPET (FDG-PET-CT-Lesions)", "brain_tumour": "MSD Task01 BrainTumour"}
ACTIVATION_NAMES = {"prelu": "PReLU", "relu": "ReLU", "leakyrelu": "LeakyReLU", "gelu": "GELU"}
SECRET_KEY = re.compile(r"token|secret|password|passwd|credential|api[_-]?key", re.IGNORECASE)
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class HubRequestError(UserInputError):
    """The Hub refused or did not answer a request (bad token, server error, timeout): one line saying which."""


# ---------------------------------------------------------------------------------------------
# Files in a checkpoint folder
# ---------------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserInputError(f"{path} does not exist; expected the {what} JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserInputError(f"{path} is not valid JSON ({error}); expected the {what}") from None


def read_metrics(path: str | Path) -> dict:
    """Read and check a ``metrics.json`` (format in the module docstring)."""
    path = Path(path)
    data = _read_json(path, "metrics")
    expected = 'expected {"task", "dataset", "split", "num_studies", "metrics": {name: number}}'
    if not isinstance(data, dict):
        raise UserInputError(f"{path} holds a {type(data).__name__}; {expected}")
    missing = [key for key in ("task", "dataset", "split", "num_studies", "metrics") if key not in data]
    if missing:
        raise UserInputError(f"{path} lacks {', '.join(missing)}; {expected}")
    if data["task"] not in METRIC_TASKS:
        raise UserInputError(f"{path}: task {data['task']!r} is unknown; expected one of: {', '.join(METRIC_TASKS)}")
    if not isinstance(data["dataset"], str) or not data["dataset"].strip():
        raise UserInputError(f"{path}: dataset {data['dataset']!r} must be a non-empty string (name or Hub id)")
    if not isinstance(data["split"], str) or not data["split"]:
        raise UserInputError(f"{path}: split {data['split']!r} must be a non-empty string, e.g. 'validation'")
    if isinstance(data["num_studies"], bool) or not isinstance(data["num_studies"], int) or data["num_studies"] < 1:
        raise UserInputError(f"{path}: num_studies {data['num_studies']!r} must be a positive integer")
    metrics = data["metrics"]
    if not isinstance(metrics, dict) or not metrics:
        raise UserInputError(f"{path}: metrics {metrics!r} must be a non-empty {{name: number}} mapping")
    for name, value in metrics.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserInputError(f"{path}: metric {name!r} is {value!r}; expected a finite number or null")
    return data


def read_training_args(path: str | Path) -> dict:
    """Read a ``training_args.json`` (a flat dict), without keys that look like credentials."""
    path = Path(path)
    data = _read_json(path, "training arguments")
    if not isinstance(data, dict):
        raise UserInputError(f"{path} holds a {type(data).__name__}; expected a flat dict of training arguments")
    return {key: value for key, value in data.items() if not SECRET_KEY.search(str(key))}


def trained_on_phantoms(training_args: dict | None) -> bool:
    """Whether a run's arguments say it trained on synthetic phantoms."""
    if not training_args:
        return False
    return training_args.get("phantoms") is True or "phantom" in str(training_args.get("dataset", "")).lower()


def check_checkpoint_folder(model_dir: str | Path) -> Path:
    """Check that a folder holds a loadable Mirror U-Net checkpoint made of safe files; returns the path.

    Required: ``config.json``, ``model.safetensors`` and the two remote-code files. Pickle-based weights
    (``.bin``, ``.pt``, ``.pth``, ``.ckpt``, ``.pkl``) are refused: loading them runs arbitrary code.
    Only the folder's top level is looked at (sub-folders, e.g. training states, are never uploaded).
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise UserInputError(f"--model {folder} is not a folder; expected a checkpoint saved with save_pretrained")
    pickled = sorted(p.name for p in folder.iterdir() if p.is_file() and is_pickle_file(p.name))
    if pickled:
        raise UserInputError(
            f"{folder} holds pickle-based weights ({', '.join(pickled)}); loading them can run arbitrary code, so "
            "they are not published: save with save_pretrained (model.safetensors) and remove them"
        )
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE, *CODE_FILES) if not (folder / name).is_file()]
    if missing:
        raise UserInputError(
            f"{folder} lacks {', '.join(missing)}; expected a folder written by MirrorUNetModel.save_pretrained "
            "(config.json, model.safetensors, configuration_mirror_unet.py, modeling_mirror_unet.py)"
        )
    return folder


def load_checkpoint_config(model_dir: Path) -> MirrorUNetConfig:
    try:
        return MirrorUNetConfig.from_pretrained(model_dir)
    except (ValueError, TypeError, OSError) as error:  # strict-dataclass validation errors are ValueErrors
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserInputError(f"{model_dir / CONFIG_FILE} is not a valid Mirror U-Net config: {first_line}") from None


def count_parameters(config: MirrorUNetConfig, weights: Path) -> int:
    """Parameters of the model `config` describes, after checking that `weights` holds exactly its tensors."""
    with torch.device("meta"):  # the architecture without allocating it
        model = MirrorUNetModel(config)
    try:
        with safe_open(str(weights), framework="pt") as handle:
            stored = set(handle.keys())
    except (SafetensorError, OSError) as error:
        raise UserInputError(f"{weights} is not a readable safetensors file ({error})") from None
    expected = set(model.state_dict())
    if stored != expected:
        missing, extra = sorted(expected - stored), sorted(stored - expected)
        detail = "; ".join(
            part for part in (
                f"missing {len(missing)} tensor(s), e.g. {missing[0]}" if missing else "",
                f"{len(extra)} unexpected tensor(s), e.g. {extra[0]}" if extra else "",
            ) if part
        )
        raise UserInputError(f"{weights} does not match {weights.parent / CONFIG_FILE}: {detail}")
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# The model card
# ---------------------------------------------------------------------------------------------


def _domain(config: MirrorUNetConfig) -> dict:
    modalities = set(config.modalities)
    if modalities <= set(AUTOPET_MODALITIES):
        return {"name": "PET/CT", "tag": "pet-ct", "task": "autopet"}
    if modalities <= set(BRATS_MODALITIES):
        return {"name": "MRI", "tag": "mri", "task": "brain_tumour"}
    return {"name": "multimodal", "tag": None, "task": None}


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
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
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
            "the union of the segmentations of branches " + ", ".join(f"`{b}`" for b in branches)
            + " (a voxel is foreground where any of them says so; their classes are concatenated in branch order)"
        )
    weights = " + ".join(f"{w:g}·`{b}`" for w, b in zip(config.fusion_weights, branches, strict=True))
    learnable = " (weights learned during training, initialised at these values)" if config.learnable_fusion_weights else ""
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
    label, unit = METRIC_LABELS.get(name, (name, ""))
    return label + (f" ({unit})" if unit else "")


def _metric_rows(metrics: dict) -> list[dict]:
    rows = []
    for name, value in metrics["metrics"].items():
        unit = METRIC_LABELS.get(name, (name, ""))[1]
        shown = "n/a" if value is None else (f"{value:.2f}" if unit else f"{value:.4f}")
        rows.append({"name": name, "label": _metric_label(name), "value": shown})
    return rows


def _eval_results(metrics: dict) -> list[EvalResult]:
    dataset = _dataset_id(metrics["dataset"])
    task_name = "3D lesion segmentation" if metrics["task"] == "autopet" else "3D brain tumour segmentation"
    return [
        EvalResult(
            task_type="image-segmentation",
            task_name=task_name,
            dataset_type=dataset,
            dataset_name=metrics["dataset"] if metrics["dataset"] != dataset else TASK_DATASETS.get(dataset, dataset),
            dataset_split=metrics["split"],
            metric_type=name,
            metric_name=_metric_label(name),
            metric_value=float(value),
        )
        for name, value in metrics["metrics"].items()
        if value is not None
    ]


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
    if metrics_path is None and (folder / METRICS_FILE).is_file():
        metrics_path = folder / METRICS_FILE
    metrics = read_metrics(metrics_path) if metrics_path is not None else None
    training_args = read_training_args(folder / TRAINING_ARGS_FILE) if (folder / TRAINING_ARGS_FILE).is_file() else None

    domain = _domain(config)
    if metrics and domain["task"] and metrics["task"] != domain["task"]:
        raise UserInputError(
            f"{metrics_path}: task {metrics['task']!r} does not fit this {domain['name']} model "
            f"(modalities {', '.join(config.modalities)}); expected task {domain['task']!r}"
        )
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
    name = repo_id.split("/")[-1]
    card_data = ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="image-segmentation",
        tags=list(dict.fromkeys(tags)),
        datasets=datasets or None,
        metrics=list(metrics["metrics"]) if metrics else None,
        model_name=name,
        eval_results=_eval_results(metrics) if metrics and any(v is not None for v in metrics["metrics"].values()) else None,
    )
    example_shape = [1, len(config.modalities), *config.patch_size]
    context = {
        "repo_id": repo_id,
        "model_name": name,
        "revision": revision if revision and revision != "main" else None,
        "preset": preset,
        "preset_description": PRESETS[preset]["description"] if preset else None,
        "domain": domain["name"],
        "parts": config.describe(),
        "shared": _shared_text(config),
        "final_mask": _final_mask_text(config),
        "final_classes": [
            {"index": k, "name": n, "value": v}
            for k, (n, v) in enumerate(zip(config.final_class_names, config.final_label_values, strict=True))
        ],
        "backbone": (
            f"channels {_format_value(config.channels)}, strides {_format_value(config.strides)}, "
            f"{config.num_res_units} residual sub-units, {config.norm} norm, {ACTIVATION_NAMES.get(config.act, config.act)}"
        ),
        "parameters": f"{parameters:,} ({parameters / 1e6:.2f} M)",
        "inputs": _input_rows(config),
        "modalities": list(config.modalities),
        "target_spacing": _format_value(config.target_spacing) + " mm" if config.target_spacing else None,
        "reference_modality": config.reference_modality,
        "total_stride": config.total_stride,
        "patch_size": _format_value(config.patch_size),
        "example_shape": ", ".join(str(s) for s in example_shape),
        "phantoms": phantoms,
        "training_args": [{"key": k, "value": _format_value(v)} for k, v in (training_args or {}).items()],
        "training_dataset": _dataset_id((training_args or {}).get("dataset")),
        "metrics": metrics,
        "metric_rows": _metric_rows(metrics) if metrics else [],
        "evaluated_on_phantoms": bool(metrics) and "phantom" in metrics["dataset"].lower(),
    }
    return card_data, context


def build_model_card(
    model_dir: str | Path,
    repo_id: str,
    *,
    metrics_path: str | Path | None = None,
    revision: str | None = None,
) -> ModelCard:
    """The model card (README.md) of a checkpoint folder, from ``hub_cards/model_card.md.j2``."""
    card_data, context = model_card_context(model_dir, repo_id, metrics_path=metrics_path, revision=revision)
    return ModelCard.from_template(card_data, template_path=str(MODEL_CARD_TEMPLATE), **context)


# ---------------------------------------------------------------------------------------------
# Talking to the Hub
# ---------------------------------------------------------------------------------------------


def _resolve_token(token: str | None) -> str:
    token = token or get_token()
    if not token:
        raise UserInputError(
            "no Hugging Face token found; set HF_TOKEN, run `hf auth login`, or pass token=... (it needs write access)"
        )
    return token


def _check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or not REPO_ID.fullmatch(repo_id) or ".." in repo_id or repo_id.endswith((".git", "-", ".")):
        raise UserInputError(f"--repo-id {repo_id!r} is not a Hub repo id; expected NAMESPACE/NAME, e.g. my-lab/mirror-unet-autopet")


def _request_line(error: Exception) -> str:
    """' to POST /api/...' for the request an httpx error belongs to ('' when it is not known)."""
    try:
        response = getattr(error, "response", None)
        request = response.request if response is not None else error.request
        return f" to {request.method} {urlsplit(str(request.url)).path}"
    except (AttributeError, RuntimeError):  # httpx raises RuntimeError for an unset .request
        return ""


@contextlib.contextmanager
def _hub_errors(action: str, endpoint: str, timeout: float | None) -> Iterator[None]:
    """Turn what the Hub client raises into one-line `HubRequestError`s naming the request and a remedy."""
    untouched = "(the local folder was not changed)"
    try:
        yield
    except OfflineModeIsEnabled:
        raise HubRequestError(f"{action}: HF_HUB_OFFLINE is set; unset it to publish {untouched}") from None
    except HfHubHTTPError as error:
        status = error.response.status_code
        reason = error.response.reason_phrase or ""
        server = (error.server_message or "").strip().splitlines()
        hint = {
            401: "check the token (HF_TOKEN or `hf auth login`)",
            403: "the token may not write to this namespace",
            404: "check the repo id and revision",
        }.get(status, "the Hub had a server error; try again later" if status >= 500 else "")
        detail = f" ({server[0]})" if server else ""
        raise HubRequestError(
            f"{action}: {endpoint} answered {status} {reason}{_request_line(error)}{detail}"
            + (f"; {hint}" if hint else "") + f" {untouched}"
        ) from None
    except httpx2.TimeoutException as error:
        raise HubRequestError(
            f"{action}: no answer from {endpoint} within {timeout:g} s{_request_line(error)}; try again or raise the timeout {untouched}"
        ) from None
    except httpx2.TransportError as error:
        raise HubRequestError(f"{action}: cannot reach {endpoint} ({error or type(error).__name__}) {untouched}") from None
    except ValueError as error:  # the Hub's validate-yaml refused the card metadata
        if "Invalid metadata in README.md" not in str(error):
            raise
        problems = "; ".join(line.lstrip("- ") for line in str(error).splitlines()[1:] if line.strip())
        raise HubRequestError(f"{action}: the Hub refused the card metadata: {problems} {untouched}") from None


@contextlib.contextmanager
def _request_timeout(seconds: float | None) -> Iterator[None]:
    """Give the shared Hub HTTP client a per-request timeout for the duration (its default is none)."""
    if seconds is None:
        yield
        return
    if seconds <= 0:
        raise UserInputError(f"--timeout {seconds:g} must be a positive number of seconds")
    client = get_session()
    previous = client.timeout
    client.timeout = httpx2.Timeout(seconds)
    try:
        yield
    finally:
        client.timeout = previous


def _holds(api: HfApi, repo_id: str, repo_type: str, revision: str | None, path: str) -> bool:
    """Whether `revision` of an existing repo has `path` (a branch that does not exist yet has nothing)."""
    try:
        return bool(api.get_paths_info(repo_id, [path], repo_type=repo_type, revision=revision))
    except RevisionNotFoundError:
        return False


def _commit_files(
    files: list[tuple[str, Path]],
    repo_id: str,
    repo_type: str,
    *,
    private: bool,
    revision: str | None,
    commit_message: str,
    token: str,
    endpoint: str | None,
    timeout: float | None,
    guarded: str | None = None,
    overwrite: bool = True,
) -> str:
    """Create the repo (and branch) if needed and commit `files` ((path in repo, local file) pairs, only
    read) in one commit; returns the repo URL. Without `overwrite`, a revision that already holds the file
    `guarded` (e.g. the weights) is refused before anything is sent."""
    api = HfApi(endpoint=endpoint, token=token, library_name="mirror-unet-hf")
    action = f"pushing to {repo_id}"
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(source)) for path, source in files]
    with _request_timeout(timeout), _hub_errors(action, api.endpoint, timeout):
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if guarded and not overwrite and _holds(api, repo_id, repo_type, revision, guarded):
            raise UserInputError(
                f"--repo-id {repo_id} already holds {guarded} on {revision or constants.DEFAULT_REVISION}; pass "
                "--overwrite (overwrite=True) to publish over it (the Hub keeps the old version in the history)"
            )
        if revision and revision != constants.DEFAULT_REVISION:
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        # create_commit (unlike upload_folder with hf_xet installed) always makes exactly one commit.
        api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message,
            repo_type=repo_type,
            revision=revision,
        )
    return str(url)


def push_checkpoint(
    model_dir: str | Path,
    repo_id: str,
    *,
    metrics_path: str | Path | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    overwrite: bool = False,
) -> str:
    """Publish a checkpoint folder as a Hub model repo with a generated model card; returns the repo URL.

    Uploads ``config.json``, ``model.safetensors``, the two remote-code files, ``README.md`` (the card)
    and, when present, ``metrics.json`` (from `metrics_path` or the folder) and ``training_args.json``
    (without credential-like keys), all in one commit on `revision` (a branch, created from ``main``
    when missing). The repo is created when missing (public unless `private`). Nothing in `model_dir`
    is written: its files are only read, and the card is staged in a temporary folder.

    Args:
        model_dir: folder written by `MirrorUNetModel.save_pretrained` (+ the training script's JSON files).
        repo_id: ``namespace/name``.
        metrics_path: a ``metrics.json`` (format in the module docstring); defaults to the folder's own.
        private: create the repo private (an existing repo keeps its visibility).
        revision: branch to commit to (default ``main``).
        commit_message: defaults to "Upload Mirror U-Net <preset> checkpoint".
        token: defaults to HF_TOKEN / the `hf auth login` token (`huggingface_hub.get_token()`).
        endpoint: Hub URL; defaults to HF_ENDPOINT (read by huggingface_hub at import) or huggingface.co.
        timeout: seconds a single HTTP request may stall before the push fails (None: wait forever).
        overwrite: publish even when `revision` already holds weights (refused by default).

    Raises:
        UserInputError: a bad folder, metrics file, repo id or missing token (before anything is sent);
            `HubRequestError` (a subclass) when the Hub refuses or does not answer.
    """
    _check_repo_id(repo_id)
    folder = check_checkpoint_folder(model_dir)
    if metrics_path is None and (folder / METRICS_FILE).is_file():
        metrics_path = folder / METRICS_FILE
    card_data, context = model_card_context(folder, repo_id, metrics_path=metrics_path, revision=revision)
    card = ModelCard.from_template(card_data, template_path=str(MODEL_CARD_TEMPLATE), **context)
    token = _resolve_token(token)
    default_message = f"Upload Mirror U-Net {context['preset']} checkpoint" if context["preset"] else "Upload Mirror U-Net checkpoint"
    files = [(name, folder / name) for name in (CONFIG_FILE, WEIGHTS_FILE, *CODE_FILES)]
    if metrics_path is not None:
        files.append((METRICS_FILE, Path(metrics_path)))
    with tempfile.TemporaryDirectory(prefix="mirror-unet-push-") as tmp:
        staging = Path(tmp)
        card.save(staging / CARD_FILE)
        files.append((CARD_FILE, staging / CARD_FILE))
        if (folder / TRAINING_ARGS_FILE).is_file():
            args = read_training_args(folder / TRAINING_ARGS_FILE)  # credential-like keys dropped
            (staging / TRAINING_ARGS_FILE).write_text(json.dumps(args, indent=2) + "\n", encoding="utf-8")
            files.append((TRAINING_ARGS_FILE, staging / TRAINING_ARGS_FILE))
        return _commit_files(
            files,
            repo_id,
            "model",
            private=private,
            revision=revision,
            commit_message=commit_message or default_message,
            token=token,
            endpoint=endpoint,
            timeout=timeout,
            guarded=WEIGHTS_FILE,
            overwrite=overwrite,
        )


# ---------------------------------------------------------------------------------------------
# Data set repos
# ---------------------------------------------------------------------------------------------

LISTING_LIMIT = 40  # files listed in a dataset card's layout block


def _dataset_files(folder: Path) -> list[tuple[str, Path]]:
    """(path in repo, file) for every regular, non-hidden file below `folder`."""
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file() or path.is_symlink():
            continue
        files.append((relative.as_posix(), path))
    return files


def _describe_layout(files: list[tuple[str, Path]]) -> dict:
    names = [name for name, _ in files]
    studies = sorted({n.rsplit("/", 1)[0] for n in names if n.endswith("/SEG.nii.gz")})
    if studies:
        return {
            "kind": "autopet",
            "summary": (
                f"AutoPET layout: {len(studies)} studies as `<patient>/<study>/` folders, each with "
                "`CTres.nii.gz` (CT on the PET grid, HU), `SUV.nii.gz` (PET in SUV) and `SEG.nii.gz` (lesion mask, 0/1)"
            ),
            "studies": len(studies),
            "example": studies[0],
        }
    labels = sorted(n for n in names if "labelsTr/" in n and n.endswith(NIFTI_SUFFIXES))
    if labels and any(n.endswith("dataset.json") for n in names):
        return {
            "kind": "msd",
            "summary": (
                f"Medical Segmentation Decathlon layout: `dataset.json`, `imagesTr/` (4D images, channel last) and "
                f"`labelsTr/` with {len(labels)} labelled cases"
            ),
            "studies": len(labels),
            "example": labels[0],
        }
    niftis = [n for n in names if n.endswith(NIFTI_SUFFIXES)]
    return {
        "kind": "files",
        "summary": f"{len(names)} files ({len(niftis)} NIfTI images)",
        "studies": None,
        "example": niftis[0] if niftis else (names[0] if names else None),
    }


AUTOPET_COLUMNS = {"ct": "CTres.nii.gz", "pet": "SUV.nii.gz", "seg": "SEG.nii.gz"}
METADATA_FILE = "metadata.jsonl"


def _study_metadata(files: list[tuple[str, Path]], layout: dict) -> list[dict]:
    """One row per study for `datasets`' niftifolder loader (``<column>_file_name`` keys pair the files
    of a study into columns): AutoPET studies -> case_id, ct, pet, seg; MSD cases -> case_id, image, label."""
    names = {name for name, _ in files}
    rows = []
    if layout["kind"] == "autopet":
        for study in sorted({n.rsplit("/", 1)[0] for n in names if n.endswith("/SEG.nii.gz")}):
            paths = {column: f"{study}/{file}" for column, file in AUTOPET_COLUMNS.items()}
            if all(path in names for path in paths.values()):
                parts = study.split("/")
                rows.append({"case_id": "_".join(parts[-2:]), **{f"{c}_file_name": p for c, p in paths.items()}})
    elif layout["kind"] == "msd":
        for label in sorted(n for n in names if n.split("/")[-2:-1] == ["labelsTr"] and n.endswith(NIFTI_SUFFIXES)):
            image = label.replace("labelsTr/", "imagesTr/")
            if image in names:
                case_id = label.rsplit("/", 1)[-1].split(".nii")[0]
                rows.append({"case_id": case_id, "image_file_name": image, "label_file_name": label})
    return rows


def _size_category(count: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if count < limit:
            return label
    return "100K<n<1M"


def build_dataset_card(
    folder: str | Path,
    repo_id: str,
    *,
    license: str = "other",
    pretty_name: str | None = None,
    phantoms: bool | None = None,
    description: str | None = None,
) -> DatasetCard:
    """The dataset card (README.md) of a data folder, from ``hub_cards/dataset_card.md.j2``.

    `phantoms` defaults to whether `make_phantoms` wrote the folder (its PHANTOMS.txt marker) or the
    folder's name mentions "phantom". For AutoPET and MSD layouts
    the card shows `datasets.load_dataset` reading one row per study (see `push_dataset`).
    """
    folder = Path(folder)
    files = _dataset_files(folder)
    layout = _describe_layout(files)
    if phantoms is None:  # make_phantoms leaves a marker in the dataset folder; else trust the folder's name
        from .data.phantoms import PHANTOM_MARKER

        marked = (folder / PHANTOM_MARKER).is_file() or any(folder.glob(f"*/{PHANTOM_MARKER}"))
        phantoms = marked or "phantom" in folder.resolve().name.lower()
    tags = ["medical-imaging", "3d", "nifti", "segmentation", "mirror-unet"]
    if layout["kind"] == "autopet":
        tags.append("pet-ct")
    elif layout["kind"] == "msd":
        tags.append("mri")
    if phantoms:
        tags.append("synthetic-data")
    card_data = DatasetCardData(
        license=license,
        pretty_name=pretty_name or repo_id.split("/")[-1],
        tags=tags,
        task_categories=["image-segmentation"],
        size_categories=[_size_category(layout["studies"] or len(files))],
    )
    rows = _study_metadata(files, layout)
    listing = [name for name, _ in files][:LISTING_LIMIT]
    total = sum(path.stat().st_size for _, path in files)
    context = {
        "repo_id": repo_id,
        "pretty_name": card_data.pretty_name,
        "description": description,
        "phantoms": phantoms,
        "layout": layout,
        "listing": listing,
        "more_files": max(0, len(files) - len(listing)),
        "num_files": len(files),
        "total_size": f"{total / 1e6:.1f} MB" if total >= 1e5 else f"{total / 1e3:.1f} kB",
        "license": license,
        "columns": [key.removesuffix("_file_name") for key in rows[0]] if rows else [],
        "num_rows": len(rows),
    }
    return DatasetCard.from_template(card_data, template_path=str(DATASET_CARD_TEMPLATE), **context)


def push_dataset(
    folder_or_prepared_dataset: str | Path,
    repo_id: str,
    *,
    license: str = "other",
    pretty_name: str | None = None,
    phantoms: bool | None = None,
    description: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> str:
    """Publish a data folder (e.g. the phantom NIfTI tree, or a folder a `datasets` builder prepared)
    as a Hub dataset repo with a generated card, in one commit; returns the repo URL.

    Every non-hidden regular file is uploaded under its relative path, plus ``README.md`` (the card;
    a folder with its own README.md is refused so that it is never overwritten silently). For an
    AutoPET or MSD layout a ``metadata.jsonl`` is added (unless the folder has one), so that
    ``datasets.load_dataset(repo_id)`` yields one row per study: ``case_id, ct, pet, seg`` (AutoPET) or
    ``case_id, image, label`` (MSD), each image a `datasets.Nifti` column. `license` is the data's
    licence as a Hub licence id ("other" when it is neither ours nor open).
    """
    _check_repo_id(repo_id)
    if not isinstance(folder_or_prepared_dataset, (str, os.PathLike)):
        raise UserInputError(
            f"push_dataset got a {type(folder_or_prepared_dataset).__name__}; expected a folder path "
            "(an in-memory datasets.Dataset publishes itself with Dataset.push_to_hub)"
        )
    folder = Path(folder_or_prepared_dataset)
    if not folder.is_dir():
        raise UserInputError(f"{folder} is not a folder; expected a data folder to publish (e.g. the phantom NIfTI tree)")
    files = _dataset_files(folder)
    if not files:
        raise UserInputError(f"{folder} holds no files to publish")
    if any(name.lower() == CARD_FILE.lower() for name, _ in files):
        raise UserInputError(f"{folder / CARD_FILE} exists; remove it (the dataset card is generated) or publish another folder")
    card = build_dataset_card(folder, repo_id, license=license, pretty_name=pretty_name, phantoms=phantoms, description=description)
    rows = _study_metadata(files, _describe_layout(files))
    token = _resolve_token(token)
    with tempfile.TemporaryDirectory(prefix="mirror-unet-push-") as tmp:
        staged = [(CARD_FILE, Path(tmp) / CARD_FILE)]
        card.save(staged[0][1])
        if rows and not any(name == METADATA_FILE for name, _ in files):
            staged.append((METADATA_FILE, Path(tmp) / METADATA_FILE))
            staged[1][1].write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        # Data files are read in place (never copied or written); only the card and metadata are staged.
        return _commit_files(
            [*files, *staged],
            repo_id,
            "dataset",
            private=private,
            revision=revision,
            commit_message=commit_message or f"Upload {len(files)} data files",
            token=token,
            endpoint=endpoint,
            timeout=timeout,
        )


__all__ = [
    "HubRequestError",
    "build_dataset_card",
    "build_model_card",
    "check_checkpoint_folder",
    "model_card_context",
    "push_checkpoint",
    "push_dataset",
    "read_metrics",
    "read_training_args",
    "trained_on_phantoms",
]
