"""The machinery of `train/train.py`, importable: the script reads as arguments → Accelerator → data →
prepare → loop → validation → checkpoints → export, and these modules hold the pieces.

- ``arguments``: ``TrainingArguments`` (every flag), ``parse_args`` (with ``--config FILE.yaml``),
  ``check_args``, ``build_config``
- ``data``: ``training_data`` (phantoms generated when there is no data folder), ``patch_loader``
- ``model``: ``initial_model`` (new, or from ``--model_name_or_path`` checked by ``load_base_config``;
  ``--gradient_checkpointing``), ``base_model_id``
- ``loop``: ``make_optimizer``, ``make_scheduler``, ``epoch_batches`` (an epoch's batches, resumable mid-epoch,
  started without touching the global RNG), ``fission_only_loss``, ``LossWindow``, ``Evaluator``
- ``reporting``: ``run_header`` (printed at start), ``tracker_config`` (hyperparameters for the trackers)
- ``checkpointing``: ``TrainerState`` and ``Checkpointer`` (atomic ``save_state`` checkpoints, resume, rotation)
- ``export``: ``Exporter`` (``best/`` and ``final/`` with ``metrics.json`` / ``training_args.json``, push)
"""

from .arguments import TrainingArguments, build_config, check_args, parse_args
from .checkpointing import Checkpointer, TrainerState

__all__ = ["Checkpointer", "TrainerState", "TrainingArguments", "build_config", "check_args", "parse_args"]
