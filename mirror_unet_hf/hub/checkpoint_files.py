"""The files of a Mirror U-Net checkpoint folder: what must be there to publish it, and the run's own JSON files.

A checkpoint folder is what `MirrorUNetModel.save_pretrained` writes (``config.json``, ``model.safetensors``,
the two model code files, and the image processor and pipeline: `COMPANION_FILES`) plus two files the
training script writes next to the weights. This module is their one writer and one reader each
(`write_metrics` / `read_metrics`, `write_training_args` / `read_training_args`).

``metrics.json`` — the validation result of the checkpoint::

    {"task": "autopet" | "brain_tumour" | …, # which metric set (a task name)
     "dataset": str,                        # data set name or Hub id, e.g. "autopet" or "ns/phantoms"
     "split": "validation",
     "num_studies": int,                    # studies scored
     "metrics": {name: float | null}}       # AutoPET: dice, fpv_ml, fnv_ml; BrainTumour: dice_wt, dice_tc,
                                            # dice_et, hd95_wt, hd95_tc, hd95_et (mm); null = undefined

Other keys (the training script adds ``"step"``) are kept and ignored.

``training_args.json`` — a flat dict of the run's arguments, e.g.
``{"preset": "autopet-v3", "dataset": "phantoms", "max_steps": 2000, "learning_rate": 0.001,
"patch_size": [96, 96, 96], "phantoms": true, ...}``. Weights trained on synthetic phantoms are
recognised by ``"phantoms": true`` or a ``dataset`` containing "phantom"; their card says so plainly.
Keys that look like credentials (token, secret, password) are dropped by `read_training_args`, so they
are never published.

Both are written as strict JSON (no NaN or infinity), indented, with a final newline, atomically.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..configuration_mirror_unet import MirrorUNetConfig
from ..errors import UserInputError
from ..files import atomic_write_text, is_pickle_file, json_text
from ..modeling_mirror_unet import MirrorUNetModel
from ..tasks import task_names

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CODE_FILES = ("configuration_mirror_unet.py", "modeling_mirror_unet.py")
PROCESSOR_FILE = "preprocessor_config.json"
# What `MirrorUNetModel.save_pretrained` writes besides the model: the image processor and the
# `mirror-unet-segmentation` pipeline with the modules it runs (remote code, self-contained as a set).
COMPANION_CODE_FILES = (
    "image_processing_mirror_unet.py",
    "pipeline_mirror_unet.py",
    "sliding_window.py",
    "window_merging.py",
    "errors.py",
)
COMPANION_FILES = (PROCESSOR_FILE, *COMPANION_CODE_FILES)
METRICS_FILE = "metrics.json"
TRAINING_ARGS_FILE = "training_args.json"

METRICS_KEYS = ("task", "dataset", "split", "num_studies", "metrics")
SECRET_KEY = re.compile(r"token|secret|password|passwd|credential|api[_-]?key", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# metrics.json and training_args.json
# ---------------------------------------------------------------------------------------------


def _write_json(path: Path, payload: Any, what: str) -> Path:
    try:
        text = json_text(payload)
    except (TypeError, ValueError) as error:  # not JSON-serialisable, or NaN / infinity
        raise UserInputError(f"cannot write {path}: the {what} are not plain JSON ({error})") from None
    atomic_write_text(path, text)
    return path


def write_metrics(folder: str | Path, payload: dict) -> Path:
    """Write `payload` as the ``metrics.json`` of a checkpoint folder (format in the module docstring);
    returns the file's path. The payload is written as given: `read_metrics` is where it is checked."""
    return _write_json(Path(folder) / METRICS_FILE, payload, "metrics")


def write_training_args(folder: str | Path, payload: dict) -> Path:
    """Write `payload` (a flat dict of the run's arguments) as the ``training_args.json`` of a folder;
    returns the file's path. Every key is written: `read_training_args` drops credential-like ones."""
    return _write_json(Path(folder) / TRAINING_ARGS_FILE, payload, "training arguments")


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserInputError(f"{path} does not exist; expected the {what} JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserInputError(f"{path} is not valid JSON ({error}); expected the {what}") from None


def _check_metric_values(path: Path, metrics: Any) -> None:
    if not isinstance(metrics, dict) or not metrics:
        raise UserInputError(f"{path}: metrics {metrics!r} must be a non-empty {{name: number}} mapping")
    for name, value in metrics.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserInputError(f"{path}: metric {name!r} is {value!r}; expected a finite number or null")


def read_metrics(path: str | Path) -> dict:
    """Read and check a ``metrics.json`` (format in the module docstring)."""
    path = Path(path)
    data = _read_json(path, "metrics")
    expected = 'expected {"task", "dataset", "split", "num_studies", "metrics": {name: number}}'
    if not isinstance(data, dict):
        raise UserInputError(f"{path} holds a {type(data).__name__}; {expected}")
    missing = [key for key in METRICS_KEYS if key not in data]
    if missing:
        raise UserInputError(f"{path} lacks {', '.join(missing)}; {expected}")
    if data["task"] not in task_names():
        raise UserInputError(f"{path}: task {data['task']!r} is unknown; expected one of: {', '.join(task_names())}")
    if not isinstance(data["dataset"], str) or not data["dataset"].strip():
        raise UserInputError(f"{path}: dataset {data['dataset']!r} must be a non-empty string (name or Hub id)")
    if not isinstance(data["split"], str) or not data["split"]:
        raise UserInputError(f"{path}: split {data['split']!r} must be a non-empty string, e.g. 'validation'")
    studies = data["num_studies"]
    if isinstance(studies, bool) or not isinstance(studies, int) or studies < 1:
        raise UserInputError(f"{path}: num_studies {studies!r} must be a positive integer")
    _check_metric_values(path, data["metrics"])
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


# ---------------------------------------------------------------------------------------------
# The saved model
# ---------------------------------------------------------------------------------------------


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
            f"{folder} holds pickle-based weights ({', '.join(pickled)}); loading them can run arbitrary code, "
            "so they are not published: save with save_pretrained (model.safetensors) and remove them"
        )
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE, *CODE_FILES) if not (folder / name).is_file()]
    if missing:
        raise UserInputError(
            f"{folder} lacks {', '.join(missing)}; expected a folder written by MirrorUNetModel.save_pretrained "
            "(config.json, model.safetensors, configuration_mirror_unet.py, modeling_mirror_unet.py)"
        )
    return folder


def load_checkpoint_config(model_dir: Path) -> MirrorUNetConfig:
    """The config of a checkpoint folder; an invalid ``config.json`` is a one-line `UserInputError`."""
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
        parts = [f"missing {len(missing)} tensor(s), e.g. {missing[0]}"] if missing else []
        parts += [f"{len(extra)} unexpected tensor(s), e.g. {extra[0]}"] if extra else []
        raise UserInputError(f"{weights} does not match {weights.parent / CONFIG_FILE}: {'; '.join(parts)}")
    return sum(p.numel() for p in model.parameters())


def companion_files(folder: Path, config: MirrorUNetConfig, staging: Path) -> list[tuple[str, Path]]:
    """(name, file) of the processor and pipeline files a checkpoint folder publishes, and its ``config.json``.

    A folder written by `MirrorUNetModel.save_pretrained` has them all and they are published as they are.
    An older folder (saved before the image processor and the pipeline existed) gets what it lacks written
    into `staging` from this package: ``preprocessor_config.json`` made from its config, the code files, and a
    copy of its ``config.json`` with ``custom_pipelines`` (and the ``id2label`` / ``label2id`` maps) added.
    """
    from transformers.dynamic_module_utils import custom_object_save

    from ..image_processing_mirror_unet import MirrorUNetImageProcessor
    from ..pipeline_mirror_unet import MirrorUNetSegmentationPipeline, custom_pipelines_entry

    missing = [name for name in COMPANION_FILES if not (folder / name).is_file()]
    if missing:
        MirrorUNetImageProcessor.from_model_config(config).save_pretrained(staging)
        custom_object_save(MirrorUNetSegmentationPipeline, staging)
    files = [(name, folder / name if name not in missing else staging / name) for name in COMPANION_FILES]
    saved = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    added = {
        "custom_pipelines": custom_pipelines_entry(),
        "id2label": {str(key): name for key, name in config.id2label.items()},
        "label2id": dict(config.label2id),
    }
    if all(key in saved for key in added):
        return [(CONFIG_FILE, folder / CONFIG_FILE), *files]
    staged_config = staging / CONFIG_FILE
    staged_config.write_text(json.dumps({**added, **saved}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return [(CONFIG_FILE, staged_config), *files]
