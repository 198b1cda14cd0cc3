"""Publish the demo as a Hugging Face Space (Gradio SDK), in one commit.

`push_space(demo_dir, repo_id)` uploads the demo folder (``app.py``, ``requirements.txt``, ``README.md``
with the Space metadata, and the bundled ``checkpoint/`` and ``examples/`` when present) together with a
copy of this `mirror_unet_hf` package under ``mirror_unet_hf/``, so that the Space runs exactly this
code without installing it from an index. With `model_id`, the Space variable ``MIRROR_UNET_MODEL``
makes the app load that Hub model instead of the bundled checkpoint, and the uploaded README.md lists it
under ``models:`` (the Hub links model and Space). The demo folder is only read.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import yaml
from huggingface_hub import SpaceCard

from ..errors import UserInputError
from ..files import is_pickle_file
from .checkpoint_files import check_checkpoint_folder
from .client import (
    CARD_FILE,
    DEFAULT_TIMEOUT,
    REPO_ID,
    check_repo_id,
    commit_files,
    hub_api,
    hub_errors,
    request_timeout,
    resolve_token,
)

APP_FILE = "app.py"
REQUIREMENTS_FILE = "requirements.txt"
MODEL_VARIABLE = "MIRROR_UNET_MODEL"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # mirror_unet_hf/, sub-packages included
PACKAGE_NAME = PACKAGE_DIR.name
SKIPPED_PARTS = ("__pycache__",)


def read_space_metadata(readme: str | Path) -> dict:
    """The YAML front matter of a Space's README.md, checked for what a Gradio Space needs:
    ``sdk: gradio`` and an ``app_file``."""
    path = Path(readme)
    if not path.is_file():
        raise UserInputError(f"{path} does not exist; a Space needs a README.md whose YAML header says sdk: gradio")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", path.read_text(encoding="utf-8"), re.DOTALL)
    if not match:
        raise UserInputError(f"{path} has no YAML header (--- ... ---); a Space reads its sdk and app_file from it")
    try:
        metadata = yaml.safe_load(match.group(1))
    except yaml.YAMLError as error:
        raise UserInputError(f"{path}: the YAML header does not parse ({str(error).splitlines()[0]})") from None
    if not isinstance(metadata, dict):
        raise UserInputError(f"{path}: the YAML header must be a mapping (sdk: gradio, app_file: app.py, ...)")
    if metadata.get("sdk") != "gradio":
        raise UserInputError(f"{path}: sdk is {metadata.get('sdk')!r}; this demo is a Gradio Space (sdk: gradio)")
    if not isinstance(metadata.get("app_file"), str) or not metadata["app_file"]:
        raise UserInputError(f"{path}: app_file is missing; expected app_file: {APP_FILE}")
    return metadata


def readme_linking_model(readme: Path, model_id: str, staging: Path) -> Path:
    """A copy of the Space's README.md in `staging` whose metadata lists `model_id` under ``models:`` (the Hub
    then links the Space from the model's page and the model from the Space's)."""
    card = SpaceCard(readme.read_text(encoding="utf-8"))
    models = list(card.data.models or [])
    if model_id not in models:
        models.append(model_id)
    card.data.models = models
    staged = staging / CARD_FILE
    staged.write_text(str(card), encoding="utf-8")
    return staged


def _visible_files(folder: Path) -> list[Path]:
    """Regular files below `folder`, without hidden files or folders and Python caches."""
    files = []
    for path in sorted(folder.rglob("*")):
        parts = path.relative_to(folder).parts
        if any(part.startswith(".") or part in SKIPPED_PARTS for part in parts) or path.suffix == ".pyc":
            continue
        if path.is_file() and not path.is_symlink():
            files.append(path)
    return files


def space_files(demo_dir: str | Path, include_package: bool = True) -> list[tuple[str, Path]]:
    """(path in the Space, local file) of everything `push_space` uploads; checks the folder first."""
    folder = Path(demo_dir)
    if not folder.is_dir():
        raise UserInputError(
            f"{folder} is not a folder; expected the demo folder (app.py, requirements.txt, README.md)"
        )
    metadata = read_space_metadata(folder / CARD_FILE)
    for name in (metadata["app_file"], REQUIREMENTS_FILE):
        if not (folder / name).is_file():
            raise UserInputError(f"{folder} lacks {name}; a Gradio Space needs its app file and {REQUIREMENTS_FILE}")
    files = _visible_files(folder)
    pickled = [p.relative_to(folder).as_posix() for p in files if is_pickle_file(p.name)]
    if pickled:
        raise UserInputError(
            f"{folder} holds pickle-based files ({', '.join(pickled)}); loading them can run arbitrary code, so "
            "they are not published: keep weights as model.safetensors"
        )
    if (folder / "checkpoint").is_dir():
        check_checkpoint_folder(folder / "checkpoint")
    entries = [(p.relative_to(folder).as_posix(), p) for p in files]
    if include_package:
        if any(name.split("/")[0] == PACKAGE_NAME for name, _ in entries):
            raise UserInputError(f"{folder / PACKAGE_NAME} exists; remove it (the package is copied in by push_space)")
        package = [p for p in _visible_files(PACKAGE_DIR) if p.suffix in (".py", ".j2")]
        entries += [(f"{PACKAGE_NAME}/{p.relative_to(PACKAGE_DIR).as_posix()}", p) for p in package]
    return entries


def push_space(
    demo_dir: str | Path,
    repo_id: str,
    *,
    model_id: str | None = None,
    include_package: bool = True,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> str:
    """Publish the demo folder as a Gradio Space in one commit; returns the Space URL.

    Args:
        demo_dir: the demo folder: ``README.md`` (Space YAML header with ``sdk: gradio`` and ``app_file``),
            the app file, ``requirements.txt``, optionally ``checkpoint/`` (a save_pretrained folder) and
            ``examples/``. Hidden files and ``__pycache__`` are left out; pickle files are refused.
        repo_id: ``namespace/name`` of the Space, created when missing (SDK gradio).
        model_id: a Hub model id the Space should serve, set as its ``MIRROR_UNET_MODEL`` variable and listed
            under ``models:`` in the uploaded README.md.
        include_package: also upload this `mirror_unet_hf` package's source under ``mirror_unet_hf/``.
        private, revision, commit_message, token, endpoint, timeout: as for `mirror_unet_hf.hub.push_checkpoint`.

    Raises:
        UserInputError: a bad folder, repo id, model id or missing token (before anything is sent);
            `HubRequestError` (a subclass) when the Hub refuses or does not answer.
    """
    check_repo_id(repo_id)
    if model_id is not None and (not isinstance(model_id, str) or not REPO_ID.fullmatch(model_id)):
        raise UserInputError(f"model id {model_id!r} is not a Hub repo id; expected NAMESPACE/NAME")
    files = space_files(demo_dir, include_package=include_package)
    token = resolve_token(token)
    with tempfile.TemporaryDirectory(prefix="mirror-unet-space-") as tmp:
        if model_id is not None:
            readme = readme_linking_model(Path(demo_dir) / CARD_FILE, model_id, Path(tmp))
            files = [(name, readme if name == CARD_FILE else path) for name, path in files]
        url = commit_files(
            files,
            repo_id,
            "space",
            private=private,
            revision=revision,
            commit_message=commit_message or "Upload the Mirror U-Net demo",
            token=token,
            endpoint=endpoint,
            timeout=timeout,
            space_sdk="gradio",
        )
    if model_id is not None:
        api = hub_api(token, endpoint)
        with request_timeout(timeout), hub_errors(f"pushing to Space {repo_id}", api.endpoint, timeout):
            api.add_space_variable(repo_id, MODEL_VARIABLE, model_id, description="Hub id of the model the demo serves")
    return url


__all__ = ["push_space", "read_space_metadata", "space_files"]
