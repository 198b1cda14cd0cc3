"""Reading a dataset repo back: a Hub dataset id (as `mirror-unet push --dataset` publishes it) becomes a local
folder in the Hugging Face cache, which the task registry then reads like any dataset folder."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

from ..errors import UserInputError
from .client import DEFAULT_TIMEOUT, REPO_ID, hub_api, hub_errors, request_timeout


def is_repo_id(value: str) -> bool:
    """Whether ``value`` has the ``namespace/name`` form of a Hub repo id (a caller checks the disk first)."""
    return bool(REPO_ID.fullmatch(str(value)))


def fetch_dataset(
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Path:
    """Download (or find in the cache) every file of a dataset repo; returns the local snapshot folder.

    Files already in the Hugging Face cache are not downloaded again. A missing repo or revision, or an
    unreachable Hub, raises a one-line `UserInputError` naming the repo.
    """
    api = hub_api(token or None, endpoint)
    action = f"downloading dataset {repo_id}"
    with request_timeout(timeout), hub_errors(action, api.endpoint, timeout):
        try:
            folder = snapshot_download(
                repo_id, repo_type="dataset", revision=revision, token=token, endpoint=api.endpoint
            )
        except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as error:
            raise UserInputError(
                f"{action}: {str(error).splitlines()[0]}; expected a dataset repo published with "
                "`mirror-unet push --dataset` (check the id, the revision and HF_TOKEN for a private repo)"
            ) from None
    return Path(folder)
