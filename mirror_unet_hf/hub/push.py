"""Publish a checkpoint folder as a Hub model repo, or a data folder as a Hub data set repo, in one commit.

Each push checks everything it can before a request is sent (folder, run files, repo id, token), stages
the generated card (and for a checkpoint the published ``training_args.json``, for a data set the
``metadata.jsonl``) in a temporary folder, and reads the user's files in place: they are never written.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..errors import UserInputError
from .checkpoint_files import (
    CODE_FILES,
    METRICS_FILE,
    TRAINING_ARGS_FILE,
    WEIGHTS_FILE,
    check_checkpoint_folder,
    companion_files,
    load_checkpoint_config,
    read_training_args,
    write_training_args,
)
from .client import (
    CARD_FILE,
    DEFAULT_TIMEOUT,
    check_repo_id,
    commit_files,
    resolve_token,
)
from .dataset_card import (
    METADATA_FILE,
    build_dataset_card,
    dataset_files,
    describe_layout,
    study_metadata,
)
from .model_card import model_card_context, render_model_card


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

    Uploads ``config.json``, ``model.safetensors``, the model, processor and pipeline code and
    ``preprocessor_config.json``, ``README.md`` (the card) and, when present, ``metrics.json`` (from
    `metrics_path` or the folder) and ``training_args.json`` (without credential-like keys), in one commit on
    `revision` (a branch, created from ``main`` when missing; the repo too, public unless `private`). An older
    folder gets the processor and pipeline from this package (`companion_files`); `model_dir` is only read.

    Args:
        model_dir: folder written by `MirrorUNetModel.save_pretrained` (+ the training script's JSON files).
        repo_id: ``namespace/name``.
        metrics_path: a ``metrics.json`` (format in `mirror_unet_hf.hub.checkpoint_files`); defaults to the
            folder's own.
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
    check_repo_id(repo_id)
    folder = check_checkpoint_folder(model_dir)
    if metrics_path is None and (folder / METRICS_FILE).is_file():
        metrics_path = folder / METRICS_FILE
    card_data, context = model_card_context(folder, repo_id, metrics_path=metrics_path, revision=revision)
    card = render_model_card(card_data, context)
    token = resolve_token(token)
    preset = f" {context['preset']}" if context["preset"] else ""
    files = [(name, folder / name) for name in (WEIGHTS_FILE, *CODE_FILES)]
    if metrics_path is not None:
        files.append((METRICS_FILE, Path(metrics_path)))
    with tempfile.TemporaryDirectory(prefix="mirror-unet-push-") as tmp:
        staging = Path(tmp)
        files += companion_files(folder, load_checkpoint_config(folder), staging)
        card.save(staging / CARD_FILE)
        files.append((CARD_FILE, staging / CARD_FILE))
        if (folder / TRAINING_ARGS_FILE).is_file():
            args = read_training_args(folder / TRAINING_ARGS_FILE)  # credential-like keys dropped
            files.append((TRAINING_ARGS_FILE, write_training_args(staging, args)))
        return commit_files(
            files,
            repo_id,
            "model",
            private=private,
            revision=revision,
            commit_message=commit_message or f"Upload Mirror U-Net{preset} checkpoint",
            token=token,
            endpoint=endpoint,
            timeout=timeout,
            guarded=WEIGHTS_FILE,
            overwrite=overwrite,
        )


# Files per commit of a dataset push; larger folders are committed in several parts.
MAX_FILES_PER_COMMIT = 1000


def _dataset_folder(folder_or_prepared_dataset: str | Path) -> tuple[Path, list[tuple[str, Path]]]:
    """The data folder to publish and its files, checked: a folder, not empty, without a README.md."""
    if not isinstance(folder_or_prepared_dataset, (str, os.PathLike)):
        raise UserInputError(
            f"push_dataset got a {type(folder_or_prepared_dataset).__name__}; expected a folder path "
            "(an in-memory datasets.Dataset publishes itself with Dataset.push_to_hub)"
        )
    folder = Path(folder_or_prepared_dataset)
    if not folder.is_dir():
        raise UserInputError(
            f"{folder} is not a folder; expected a data folder to publish (e.g. the phantom NIfTI tree)"
        )
    files = dataset_files(folder)
    if not files:
        raise UserInputError(f"{folder} holds no files to publish")
    if any(name.lower() == CARD_FILE.lower() for name, _ in files):
        raise UserInputError(
            f"{folder / CARD_FILE} exists; remove it (the dataset card is generated) or publish another folder"
        )
    return folder, files


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
    max_files_per_commit: int = MAX_FILES_PER_COMMIT,
) -> str:
    """Publish a data folder (e.g. the phantom NIfTI tree, or a folder a `datasets` builder prepared)
    as a Hub dataset repo with a generated card; returns the repo URL.

    Up to `max_files_per_commit` files go in one commit; a larger folder is committed in parts of that
    many files (the Hub advises against huge single commits), the card and ``metadata.jsonl`` in the last
    one, so the repo only describes itself as a dataset once every data file is there. Pushing again after
    an interruption uploads the folder again (the Hub deduplicates unchanged file contents).

    Every non-hidden regular file is uploaded under its relative path, plus ``README.md`` (the card;
    a folder with its own README.md is refused so that it is never overwritten silently). For an
    AutoPET or MSD layout a ``metadata.jsonl`` is added (unless the folder has one), so that
    ``datasets.load_dataset(repo_id)`` yields one row per study: ``case_id, ct, pet, seg`` (AutoPET) or
    ``case_id, image, label`` (MSD), each image a `datasets.Nifti` column. `license` is the data's
    licence as a Hub licence id ("other" when it is neither ours nor open).
    """
    check_repo_id(repo_id)
    if isinstance(max_files_per_commit, bool) or not isinstance(max_files_per_commit, int) or max_files_per_commit < 1:
        raise UserInputError(f"max_files_per_commit must be a positive integer, got {max_files_per_commit!r}")
    folder, files = _dataset_folder(folder_or_prepared_dataset)
    card = build_dataset_card(
        folder, repo_id, license=license, pretty_name=pretty_name, phantoms=phantoms, description=description
    )
    rows = study_metadata(files, describe_layout(files))
    token = resolve_token(token)
    with tempfile.TemporaryDirectory(prefix="mirror-unet-push-") as tmp:
        staged = [(CARD_FILE, Path(tmp) / CARD_FILE)]
        card.save(staged[0][1])
        if rows and not any(name == METADATA_FILE for name, _ in files):
            staged.append((METADATA_FILE, Path(tmp) / METADATA_FILE))
            staged[1][1].write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        # Data files are read in place (never copied or written); only the card and metadata are staged.
        parts = [files[i : i + max_files_per_commit] for i in range(0, len(files), max_files_per_commit)]
        message = commit_message or f"Upload {len(files)} data files"
        for number, part in enumerate(parts, start=1):
            last = number == len(parts)
            url = commit_files(
                [*part, *staged] if last else part,
                repo_id,
                "dataset",
                private=private,
                revision=revision,
                commit_message=message if len(parts) == 1 else f"{message} (part {number} of {len(parts)})",
                token=token,
                endpoint=endpoint,
                timeout=timeout,
            )
        return url
