"""Talking to the Hugging Face Hub: token, repo-id check, request timeouts, one-commit uploads, and errors.

Everything the Hub client raises while publishing is turned into a one-line `HubRequestError` naming the
request that failed and a remedy (`hub_errors`). Uploads go through `commit_files`, which creates the repo
(and branch) when missing and commits all files in exactly one commit.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import CommitOperationAdd, HfApi, constants, get_session, get_token
from huggingface_hub.errors import (
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RevisionNotFoundError,
)

from ..errors import UserInputError

CARD_FILE = "README.md"  # the card of every Hub repo (model, data set or Space)
DEFAULT_TIMEOUT = 60.0  # seconds without progress on one HTTP request before a push gives up
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
LIBRARY_NAME = "mirror-unet-hf"  # how the Hub's request statistics name this package
UNTOUCHED = "(the local folder was not changed)"


class HubRequestError(UserInputError):
    """The Hub refused or did not answer a request (bad token, server error, timeout): one line saying which."""


def resolve_token(token: str | None) -> str:
    """`token`, else HF_TOKEN / the `hf auth login` token; none at all is a `UserInputError`."""
    token = token or get_token()
    if not token:
        raise UserInputError(
            "no Hugging Face token found; set HF_TOKEN, run `hf auth login`, or pass token=... (it needs write access)"
        )
    return token


def check_repo_id(repo_id: str) -> None:
    """Refuse anything but a well-formed ``namespace/name`` Hub repo id, before a request is sent."""
    if (
        not isinstance(repo_id, str)
        or not REPO_ID.fullmatch(repo_id)
        or ".." in repo_id
        or repo_id.endswith((".git", "-", "."))
    ):
        raise UserInputError(
            f"--repo-id {repo_id!r} is not a Hub repo id; expected NAMESPACE/NAME, e.g. my-lab/mirror-unet-autopet"
        )


def hub_api(token: str, endpoint: str | None) -> HfApi:
    """A Hub client for `endpoint` (None: HF_ENDPOINT or huggingface.co) authenticated with `token`."""
    return HfApi(endpoint=endpoint, token=token, library_name=LIBRARY_NAME)


def _request_line(error: Exception) -> str:
    """' to POST /api/...' for the request an httpx error belongs to ('' when it is not known)."""
    try:
        response = getattr(error, "response", None)
        request = response.request if response is not None else error.request
        return f" to {request.method} {urlsplit(str(request.url)).path}"
    except (AttributeError, RuntimeError):  # httpx raises RuntimeError for an unset .request
        return ""


def _http_error_line(action: str, endpoint: str, error: HfHubHTTPError) -> str:
    status = error.response.status_code
    reason = error.response.reason_phrase or ""
    server = (error.server_message or "").strip().splitlines()
    hint = {
        401: "check the token (HF_TOKEN or `hf auth login`)",
        403: "the token may not write to this namespace",
        404: "check the repo id and revision",
    }.get(status, "the Hub had a server error; try again later" if status >= 500 else "")
    detail = f" ({server[0]})" if server else ""
    return (
        f"{action}: {endpoint} answered {status} {reason}{_request_line(error)}{detail}"
        + (f"; {hint}" if hint else "")
        + f" {UNTOUCHED}"
    )


@contextlib.contextmanager
def hub_errors(action: str, endpoint: str, timeout: float | None) -> Iterator[None]:
    """Turn what the Hub client raises into one-line `HubRequestError`s naming the request and a remedy.

    `action` starts each message (e.g. "pushing to ns/name"); `timeout` is the one `request_timeout` set.
    """
    try:
        yield
    except OfflineModeIsEnabled:
        raise HubRequestError(f"{action}: HF_HUB_OFFLINE is set; unset it to publish {UNTOUCHED}") from None
    except HfHubHTTPError as error:
        raise HubRequestError(_http_error_line(action, endpoint, error)) from None
    except httpx2.TimeoutException as error:
        raise HubRequestError(
            f"{action}: no answer from {endpoint} within {timeout:g} s{_request_line(error)}; "
            f"try again or raise the timeout {UNTOUCHED}"
        ) from None
    except httpx2.TransportError as error:
        raise HubRequestError(
            f"{action}: cannot reach {endpoint} ({error or type(error).__name__}) {UNTOUCHED}"
        ) from None
    except ValueError as error:  # the Hub's validate-yaml refused the card metadata
        if "Invalid metadata in README.md" not in str(error):
            raise
        problems = "; ".join(line.lstrip("- ") for line in str(error).splitlines()[1:] if line.strip())
        raise HubRequestError(f"{action}: the Hub refused the card metadata: {problems} {UNTOUCHED}") from None


@contextlib.contextmanager
def request_timeout(seconds: float | None) -> Iterator[None]:
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


def _refuse_overwrite(api: HfApi, repo_id: str, repo_type: str, revision: str | None, guarded: str) -> None:
    if _holds(api, repo_id, repo_type, revision, guarded):
        raise UserInputError(
            f"--repo-id {repo_id} already holds {guarded} on {revision or constants.DEFAULT_REVISION}; pass "
            "--overwrite (overwrite=True) to publish over it (the Hub keeps the old version in the history)"
        )


def commit_files(
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
    space_sdk: str | None = None,
) -> str:
    """Create the repo (and branch) if needed and commit `files` ((path in repo, local file) pairs, only
    read) in one commit; returns the repo URL.

    Without `overwrite`, a revision that already holds the file `guarded` (e.g. the weights) is refused
    before anything is sent. `space_sdk` is the SDK of a Space created here (repo_type "space").
    """
    api = hub_api(token, endpoint)
    action = f"pushing to Space {repo_id}" if repo_type == "space" else f"pushing to {repo_id}"
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(source)) for path, source in files]
    created = {"space_sdk": space_sdk} if space_sdk else {}
    with request_timeout(timeout), hub_errors(action, api.endpoint, timeout):
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, **created)
        if guarded and not overwrite:
            _refuse_overwrite(api, repo_id, repo_type, revision, guarded)
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
