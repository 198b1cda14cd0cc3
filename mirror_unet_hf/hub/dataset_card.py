"""The dataset card of a data folder, and what a data set repo holds besides the folder's files.

`describe_layout` recognises the registered tasks' layouts (AutoPET, Medical Segmentation Decathlon, ...); `study_metadata` is
the ``metadata.jsonl`` that lets ``datasets.load_dataset(repo_id)`` read one row per study;
`build_dataset_card` renders ``mirror_unet_hf/hub_cards/dataset_card.md.j2``.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

from ..files import NIFTI_SUFFIXES
from ..tasks import get_task, list_tasks, task_names
from .model_card import CARD_TEMPLATES

DATASET_CARD_TEMPLATE = CARD_TEMPLATES / "dataset_card.md.j2"
LISTING_LIMIT = 40  # files listed in a dataset card's layout block
METADATA_FILE = "metadata.jsonl"


def dataset_files(folder: Path) -> list[tuple[str, Path]]:
    """(path in repo, file) for every regular, non-hidden file below `folder`."""
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file() or path.is_symlink():
            continue
        files.append((relative.as_posix(), path))
    return files


def describe_layout(files: list[tuple[str, Path]]) -> dict:
    """The folder's layout: ``kind`` (a task name, e.g. autopet or brain_tumour, or ``files``), a one-line
    ``summary``, the number of ``studies`` (None for plain files) and an ``example`` path."""
    names = [name for name, _ in files]
    for task in list_tasks():
        layout = task.repo_layout(names)
        if layout is not None:
            return {"kind": task.name, **layout}
    niftis = [n for n in names if n.endswith(NIFTI_SUFFIXES)]
    return {
        "kind": "files",
        "summary": f"{len(names)} files ({len(niftis)} NIfTI images)",
        "studies": None,
        "example": niftis[0] if niftis else (names[0] if names else None),
    }


def study_metadata(files: list[tuple[str, Path]], layout: dict) -> list[dict]:
    """One row per study for `datasets`' niftifolder loader (``<column>_file_name`` keys pair the files
    of a study into columns): AutoPET studies -> case_id, ct, pet, seg; MSD cases -> case_id, image, label.
    Empty for any other layout."""
    if layout["kind"] not in task_names():
        return []
    return get_task(layout["kind"]).repo_study_rows({name for name, _ in files})


def _size_category(count: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if count < limit:
            return label
    return "100K<n<1M"


def _is_phantom_folder(folder: Path) -> bool:
    """Whether `make_phantoms` wrote the folder (its marker file), else whether its name says phantom."""
    from ..data.phantoms import PHANTOM_MARKER

    marked = (folder / PHANTOM_MARKER).is_file() or any(folder.glob(f"*/{PHANTOM_MARKER}"))
    return marked or "phantom" in folder.resolve().name.lower()


def _dataset_card_data(
    repo_id: str, license: str, pretty_name: str | None, layout: dict, phantoms: bool, num_files: int
) -> DatasetCardData:
    tags = ["medical-imaging", "3d", "nifti", "segmentation", "mirror-unet"]
    tag = get_task(layout["kind"]).domain_tag if layout["kind"] in task_names() else None
    if tag:
        tags.append(tag)
    if phantoms:
        tags.append("synthetic-data")
    return DatasetCardData(
        license=license,
        pretty_name=pretty_name or repo_id.split("/")[-1],
        tags=tags,
        task_categories=["image-segmentation"],
        size_categories=[_size_category(layout["studies"] or num_files)],
    )


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
    files = dataset_files(folder)
    layout = describe_layout(files)
    if phantoms is None:
        phantoms = _is_phantom_folder(folder)
    card_data = _dataset_card_data(repo_id, license, pretty_name, layout, phantoms, len(files))
    rows = study_metadata(files, layout)
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
