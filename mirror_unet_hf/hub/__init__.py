"""Publish Mirror U-Net checkpoints, data sets and the demo on the Hugging Face Hub, each with a generated card.

`push_checkpoint` checks a `save_pretrained` folder, writes its model card (from
``mirror_unet_hf/hub_cards/model_card.md.j2``, described from the checkpoint's own config) into a staging
folder and uploads weights, config, remote code and card in one commit. `push_dataset` publishes a folder
(e.g. the phantom NIfTI tree) as a data set repo with a card from ``hub_cards/dataset_card.md.j2``.
`push_space` publishes the demo folder, with a copy of this package, as a Gradio Space.
The user's folders are only ever read.

Modules:

- `checkpoint_files`: a checkpoint folder's files; the one writer and reader of ``metrics.json`` and
  ``training_args.json`` (their format is described there).
- `model_card`, `dataset_card`: what the cards say.
- `client`: token, repo ids, request timeouts, one-commit uploads, and `HubRequestError`.
- `push`: `push_checkpoint`, `push_dataset`; `space`: `push_space`; `fetch`: `fetch_dataset` (a dataset repo
  back to a local folder, for `load_mirror_dataset`).
"""

from .checkpoint_files import (
    METRICS_FILE,
    TRAINING_ARGS_FILE,
    check_checkpoint_folder,
    read_metrics,
    read_training_args,
    trained_on_phantoms,
    write_metrics,
    write_training_args,
)
from .client import DEFAULT_TIMEOUT, HubRequestError
from .dataset_card import build_dataset_card
from .fetch import fetch_dataset
from .model_card import MODEL_CARD_TEMPLATE, build_model_card, model_card_context
from .push import push_checkpoint, push_dataset
from .space import push_space, read_space_metadata, space_files

__all__ = [
    "DEFAULT_TIMEOUT",
    "METRICS_FILE",
    "MODEL_CARD_TEMPLATE",
    "TRAINING_ARGS_FILE",
    "HubRequestError",
    "build_dataset_card",
    "build_model_card",
    "check_checkpoint_folder",
    "fetch_dataset",
    "model_card_context",
    "push_checkpoint",
    "push_dataset",
    "push_space",
    "read_metrics",
    "read_space_metadata",
    "read_training_args",
    "space_files",
    "trained_on_phantoms",
    "write_metrics",
    "write_training_args",
]
