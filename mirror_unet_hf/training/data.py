"""The data of a training run: the dataset (phantoms generated first when there is no `--data_dir`), prepared
into the compact cache of `mirror-unet prepare` under `--cache_dir`, the training patches (which studies, which
class labels, which intensities), the patch loader, and whether the run trains on phantoms (recorded with the
exported model)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import MirrorPatchDataset, make_phantoms
from ..data.builder import find_dataset_root, resolve_data_dir
from ..data.phantoms import is_phantom_dataset
from ..data.preparation import load_prepared_dataset
from ..errors import UserInputError
from ..tasks import get_task
from .arguments import TrainingArguments


def phantom_data_dir(args: TrainingArguments) -> str:
    """Where the phantoms of a run without `--data_dir` live: `--phantom_dir`, or a cache folder next to
    `output_dir` named by layout, count, seed and shape, so runs with the same settings share it."""
    shape = "x".join(map(str, args.phantom_shape)) if args.phantom_shape else "default"
    name = f"{args.dataset}-n{args.phantom_count}-s{args.phantom_seed}-{shape}"
    return args.phantom_dir or str(Path(args.output_dir).resolve().parent / "phantom-cache" / name)


def ensure_phantoms(args: TrainingArguments, accelerator) -> str:
    """Generate the phantoms on the main process if they are not there yet; every process waits for them."""
    data_dir = phantom_data_dir(args)
    layout = args.dataset
    if accelerator.is_main_process and not (Path(data_dir) / get_task(layout).folder).exists():
        accelerator.print(f"Generating {args.phantom_count} {layout} phantoms in {data_dir}")
        make_phantoms(layout, data_dir, args.phantom_count, args.phantom_seed, shape=args.phantom_shape)
    accelerator.wait_for_everyone()
    return data_dir


def training_data(args: TrainingArguments, accelerator, config):
    """DatasetDict of the run (rows naming each study's prepared file) and the data folder it was read from
    (phantoms generated, then studies prepared for `config`'s preprocessing, on the main process first)."""
    data_dir = args.data_dir if args.data_dir is not None else ensure_phantoms(args, accelerator)
    cache_dir = args.cache_dir or str(Path(args.output_dir).resolve().parent / "datasets-cache")
    with accelerator.main_process_first():
        dataset = load_prepared_dataset(
            args.dataset,
            data_dir,
            config,
            fold=args.fold,
            num_folds=args.num_folds,
            cache_dir=cache_dir,
            skip_bad=args.skip_bad,
            num_proc=args.preprocessing_num_workers,
        )
    if args.max_train_studies:
        dataset["train"] = dataset["train"].select(range(min(args.max_train_studies, len(dataset["train"]))))
    if len(dataset["train"]) == 0:
        raise UserInputError(f"fold {args.fold} leaves no training studies in {data_dir}")
    return dataset, data_dir


def class_label_source(config) -> str:
    """Where the patches' `class_labels` come from: a lesion-presence head with `classification_target="study"` is
    trained against whether the study's label has foreground (the sampler knows it from the labels alone, so it
    needs no metadata file); anything else gets the diagnosis index (-1 where unknown)."""
    head = config.classification_head
    if head is not None and head["task"] == "lesion_presence" and config.classification_target == "study":
        return "lesion_presence"
    return "diagnosis"


def training_patches(args: TrainingArguments, config, train_split) -> MirrorPatchDataset:
    """The training patches of the run: `--positives_only`, `--balance_groups` (groups from the task's
    `case_group`, e.g. the tracer), `--clip_intensities`, augmentation and the class-label source."""
    groups = None
    if args.balance_groups:
        groups = [get_task(args.dataset).case_group(case_id) for case_id in train_split["case_id"]]
    return MirrorPatchDataset(
        train_split,
        config,
        config.patch_size,
        args.patches_per_volume,
        tuple(args.pos_neg_ratio),
        seed=args.seed,
        augmentation=args.augment,
        positives_only=args.positives_only,
        groups=groups,
        class_labels=class_label_source(config),
        clip_intensities=args.clip_intensities,
    )


def sampling_info(train_set: MirrorPatchDataset) -> dict:
    """What an epoch of the run samples, for `training_args.json` and the run header."""
    return {
        "epoch_studies": len(train_set.order),
        "epoch_patches": len(train_set),
        "epoch_sampling": train_set.order.describe(),
    }


def uses_phantoms(args: TrainingArguments, data_dir: str) -> bool:
    """Whether the run trains on synthetic phantoms (generated here, or a phantom folder given as data_dir)."""
    return args.data_dir is None or is_phantom_dataset(find_dataset_root(args.dataset, resolve_data_dir(data_dir)))


def collate_tensors(items: list[dict]) -> dict:
    """Stack the tensor fields of a batch (case ids stay behind: Accelerate dispatches tensors only)."""
    return {key: torch.stack([item[key] for item in items]) for key in ("pixel_values", "labels", "class_labels")}


def patch_loader(args: TrainingArguments, train_set: MirrorPatchDataset) -> torch.utils.data.DataLoader:
    """The training DataLoader (before `accelerator.prepare`): full batches of patches only."""
    return torch.utils.data.DataLoader(
        train_set,
        batch_size=args.per_device_train_batch_size,
        num_workers=args.num_workers,
        drop_last=True,
        collate_fn=collate_tensors,
    )
