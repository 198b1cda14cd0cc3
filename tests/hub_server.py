"""A small Hugging Face Hub-compatible HTTP server on 127.0.0.1, for testing real Hub clients offline.

`LoopbackHub` speaks the endpoints that `huggingface_hub` (create_repo, create_branch, create_commit,
repo_info, list_repo_tree, paths-info, hf_hub_download, snapshot_download), `transformers`
(`from_pretrained` with remote code), `datasets` and `HfApi.add_space_variable` call: repos of every
type (a Space keeps its sdk and variables) with branches and real 40-hex commit shas, git-blob ETags,
`X-Repo-Commit`, `X-Error-Code` on errors, token checks (401 without a valid `Authorization` header on
writes and private repos) and `/api/validate-yaml`.
Blobs are stored content-addressed in a folder; refs and commits live in memory.

Failures are injected with `fail(...)` (an HTTP status) and `hang(...)` (no answer). `requests` logs
every request, so a test can show what a client did (or that it did nothing).

The `hub` pytest fixture (import `hub_fixture` into a test module) gives a started server in a temporary folder.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
TEST_TOKEN = "hf_loopback_test_token"
TEST_USER = "tester"
INITIAL_GITATTRIBUTES = (
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.nii.gz filter=lfs diff=lfs merge=lfs -text\n"
)


def git_blob_oid(data: bytes) -> str:
    """The git object id of a file's content (what the Hub sends as ETag of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    sha: str
    parent: str | None
    files: dict[str, str]  # path -> blob oid
    title: str
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit sha
    commits: dict[str, Commit] = field(default_factory=dict)
    sdk: str | None = None  # Spaces only: gradio, docker, static
    variables: dict[str, dict] = field(default_factory=dict)  # Spaces only: key -> {value, description, updatedAt}


@dataclass
class Rule:
    """An injected failure: requests whose method matches and whose path contains `path` get `status`
    (or no answer for `hang` seconds); `remaining` counts down when set."""

    method: str | None
    path: str
    status: int | None
    hang: float | None
    remaining: int | None


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


class LoopbackHub:
    """Start with `start()` (or use as a context manager); `url` is the endpoint to give clients."""

    def __init__(self, root: str | Path, token: str = TEST_TOKEN, user: str = TEST_USER, orgs: tuple[str, ...] = ()):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.token, self.user, self.orgs = token, user, tuple(orgs)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path with query, status)
        self.rules: list[Rule] = []
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> LoopbackHub:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="loopback-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut open keep-alive connections, so that no client can reach it afterwards."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for connection in list(self._connections):
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    @property
    def running(self) -> bool:
        return self._server is not None and not self._stopping.is_set()

    def __enter__(self) -> LoopbackHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ test controls

    def fail(self, status: int, path: str = "", method: str | None = None, times: int | None = None) -> None:
        """Answer `status` to matching requests (all of them, or the next `times`)."""
        with self._lock:
            self.rules.append(Rule(method, path, status, None, times))

    def hang(self, path: str = "", method: str | None = None, seconds: float = 30.0, times: int | None = None) -> None:
        """Do not answer matching requests for `seconds` (then drop the connection)."""
        with self._lock:
            self.rules.append(Rule(method, path, None, seconds, times))

    def clear_failures(self) -> None:
        with self._lock:
            self.rules.clear()

    def env(self, hf_home: str | Path, **extra: str) -> dict[str, str]:
        """Environment variables that point a fresh client process at this server."""
        return {
            "HF_ENDPOINT": self.url,
            "HF_HOME": str(hf_home),
            "HF_TOKEN": self.token,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            **extra,
        }

    # ------------------------------------------------------------------ repository state

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        with self._lock:
            repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def commit_of(self, repo: Repo, revision: str) -> Commit:
        if revision in repo.branches:
            return repo.commits[repo.branches[revision]]
        if re.fullmatch(r"[0-9a-f]{40}", revision) and revision in repo.commits:
            return repo.commits[revision]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Path -> content of every file of a repo at a revision."""
        repo = self.repo(repo_id, repo_type)
        with self._lock:
            commit = self.commit_of(repo, revision)
            return {path: self.read_blob(oid) for path, oid in commit.files.items()}

    def history(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[Commit]:
        """Commits reachable from `revision`, newest first."""
        repo = self.repo(repo_id, repo_type)
        with self._lock:
            commit: Commit | None = self.commit_of(repo, revision)
            out = []
            while commit is not None:
                out.append(commit)
                commit = repo.commits.get(commit.parent) if commit.parent else None
            return out

    def read_blob(self, oid: str) -> bytes:
        return (self.root / "blobs" / oid).read_bytes()

    def _store_blob(self, data: bytes) -> str:
        oid = git_blob_oid(data)
        path = self.root / "blobs" / oid
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return oid

    def _new_commit(self, repo: Repo, parent: str | None, files: dict[str, str], title: str) -> Commit:
        date = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        # A git-style commit object over the file list: identical content at different times or
        # parents still gets a new sha, like git.
        body = "".join(f"{oid} {path}\n" for path, oid in sorted(files.items()))
        tree = hashlib.sha1(body.encode()).hexdigest()
        text = f"tree {tree}\nparent {parent or ''}\nauthor {self.user} {time.time_ns()}\n\n{title}\n"
        sha = hashlib.sha1(b"commit %d\0" % len(text) + text.encode()).hexdigest()
        commit = Commit(sha, parent, dict(files), title, date)
        repo.commits[sha] = commit
        return commit

    # ------------------------------------------------------------------ request handling

    def _match_rule(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if (rule.method is None or rule.method == method) and rule.path in path:
                    if rule.remaining is not None:
                        if rule.remaining <= 0:
                            continue
                        rule.remaining -= 1
                    return rule
        return None

    def _authorised(self, headers) -> bool | None:
        """True: valid token; False: no token; None: a token that is not valid."""
        value = headers.get("Authorization")
        if not value:
            return False
        return value == f"Bearer {self.token}" or None

    def _require_write(self, headers, namespace: str | None = None) -> None:
        auth = self._authorised(headers)
        if auth is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        if not auth:
            raise HubError(401, "You must be authenticated to access this resource")
        if namespace is not None and namespace not in (self.user, *self.orgs):
            raise HubError(403, f"You don't have the rights to create or write repos under namespace {namespace!r}")

    def _readable(self, repo: Repo, headers) -> None:
        auth = self._authorised(headers)
        if auth is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        if repo.private and not auth:
            # The Hub hides private repos from anonymous clients behind the same answer as missing ones.
            raise HubError(401, f"Repository {repo.repo_id} not found", "RepoNotFound")


class _Handler(BaseHTTPRequestHandler):
    hub: LoopbackHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def setup(self):
        super().setup()
        with self.hub._lock:
            self.hub._connections.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            with self.hub._lock:
                self.hub._connections.discard(self.connection)

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    # ------------------------------------------------------------------ plumbing

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.hub.requests.append((self.command, self.path, status))

    def _json(self, status: int, payload, headers: dict | None = None):
        self._send(status, json.dumps(payload).encode(), headers)

    def _dispatch(self, method: str):
        split = urlsplit(self.path)
        body = self._body() if method in ("POST", "PUT") else b""
        rule = self.hub._match_rule(method, split.path)
        if rule is not None and rule.hang is not None:
            self.hub._stopping.wait(rule.hang)
            self.hub.requests.append((method, self.path, 0))
            self.close_connection = True
            return
        if rule is not None:
            self._json(
                rule.status, {"error": f"injected failure {rule.status}"}, {"X-Error-Message": "injected failure"}
            )
            return
        try:
            self._route(method, split.path, parse_qs(split.query), body)
        except HubError as error:
            headers = {"X-Error-Message": error.message}
            if error.code:
                headers["X-Error-Code"] = error.code
            self._json(error.status, {"error": error.message, **error.extra}, headers)

    def _route(self, method: str, path: str, query: dict, body: bytes):
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:1] == ["api"]:
            if parts == ["api", "whoami-v2"] and method == "GET":
                return self._whoami()
            if parts == ["api", "repos", "create"] and method == "POST":
                return self._create_repo(json.loads(body or b"{}"))
            if parts == ["api", "validate-yaml"] and method == "POST":
                return self._validate_yaml(json.loads(body or b"{}"))
            if len(parts) >= 4 and parts[1] in REPO_TYPES:
                repo_type, repo_id, rest = REPO_TYPES[parts[1]], f"{parts[2]}/{parts[3]}", parts[4:]
                return self._repo_api(method, repo_type, repo_id, rest, query, body)
            raise HubError(404, f"no route for {method} {path}")
        # File downloads: /{ns}/{name}/resolve/{rev}/{path}, with a datasets/ or spaces/ prefix for those types.
        repo_type = "model"
        if parts and parts[0] in ("datasets", "spaces"):
            repo_type, parts = REPO_TYPES[parts[0]], parts[1:]
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        raise HubError(404, f"no route for {method} {path}")

    # ------------------------------------------------------------------ endpoints

    def _whoami(self):
        auth = self.hub._authorised(self.headers)
        if not auth:
            raise HubError(401, "Invalid credentials in Authorization header")
        self._json(
            200,
            {
                "type": "user",
                "name": self.hub.user,
                "orgs": [{"name": org, "type": "org"} for org in self.hub.orgs],
                "auth": {"type": "access_token", "accessToken": {"displayName": "loopback", "role": "write"}},
            },
        )

    def _create_repo(self, payload: dict):
        hub = self.hub
        namespace = payload.get("organization") or hub.user
        hub._require_write(self.headers, namespace)
        repo_type = payload.get("type") or "model"
        repo_id = f"{namespace}/{payload['name']}"
        url = f"{hub.url}/{URL_PREFIX[repo_type]}{repo_id}"
        with hub._lock:
            if (repo_type, repo_id) in hub.repos:
                # The Hub names the existing repo's URL in the 409 answer; clients with exist_ok use it.
                raise HubError(409, f"You already created this {repo_type} repo", extra={"url": url})
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            if repo_type == "space" and not payload.get("sdk"):
                raise HubError(400, "Space repos need an sdk (gradio, docker or static)")
            repo = Repo(repo_type, repo_id, private, sdk=payload.get("sdk") if repo_type == "space" else None)
            # Like the Hub, a new repo starts with one commit holding .gitattributes.
            first = hub._new_commit(
                repo, None, {".gitattributes": hub._store_blob(INITIAL_GITATTRIBUTES)}, "initial commit"
            )
            repo.branches["main"] = first.sha
            hub.repos[(repo_type, repo_id)] = repo
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict):
        errors = validate_card_metadata(payload.get("content", ""))
        self._json(400 if errors else 200, {"errors": [{"message": e} for e in errors], "warnings": []})

    def _repo_api(self, method: str, repo_type: str, repo_id: str, rest: list[str], query: dict, body: bytes):
        hub = self.hub
        repo = hub.repo(repo_id, repo_type)
        hub._readable(repo, self.headers)
        action = rest[0] if rest else None
        if method == "GET" and action in (None, "revision"):
            revision = rest[1] if action == "revision" and len(rest) > 1 else "main"
            return self._repo_info(repo, revision, query)
        if method == "GET" and action == "refs":
            return self._json(
                200,
                {
                    "branches": [
                        {"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, s in repo.branches.items()
                    ],
                    "tags": [],
                    "converts": [],
                    "pullRequests": [],
                },
            )
        if method == "GET" and action == "tree" and len(rest) >= 2:
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return self._tree(repo, rest[1], "/".join(rest[2:]), recursive)
        if method == "POST" and action == "paths-info" and len(rest) >= 2:
            return self._paths_info(repo, rest[1], body)
        if method == "POST" and action == "preupload" and len(rest) >= 2:
            hub._require_write(self.headers, repo_id.split("/")[0])
            return self._preupload(repo, rest[1], json.loads(body or b"{}"))
        if method == "POST" and action == "commit" and len(rest) >= 2:
            hub._require_write(self.headers, repo_id.split("/")[0])
            return self._commit(repo, rest[1], body)
        if method == "POST" and action == "branch" and len(rest) >= 2:
            hub._require_write(self.headers, repo_id.split("/")[0])
            return self._create_branch(repo, rest[1], json.loads(body or b"{}"))
        if action == "variables" and repo_type == "space" and method in ("GET", "POST"):
            hub._require_write(self.headers, repo_id.split("/")[0])
            return self._variables(repo, json.loads(body or b"{}") if method == "POST" else None)
        raise HubError(404, f"no route for {method} /api/{repo_type}s/{repo_id}/{'/'.join(rest)}")

    def _entry(self, path: str, oid: str) -> dict:
        return {"type": "file", "path": path, "oid": oid, "size": (self.hub.root / "blobs" / oid).stat().st_size}

    def _repo_info(self, repo: Repo, revision: str, query: dict):
        with self.hub._lock:
            commit = self.hub.commit_of(repo, revision)
            siblings = []
            for path, oid in sorted(commit.files.items()):
                sibling = {"rfilename": path}
                if query.get("blobs", ["false"])[0].lower() in ("1", "true"):
                    sibling.update(size=self._entry(path, oid)["size"], blobId=oid)
                siblings.append(sibling)
        self._json(
            200,
            {
                "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": commit.sha,
                "lastModified": commit.date,
                "createdAt": repo.commits[next(iter(repo.commits))].date,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                **({"sdk": repo.sdk} if repo.repo_type == "space" else {}),
            },
        )

    def _tree(self, repo: Repo, revision: str, folder: str, recursive: bool):
        with self.hub._lock:
            commit = self.hub.commit_of(repo, revision)
            prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
            if prefix and not any(p.startswith(prefix) for p in commit.files):
                raise HubError(404, f"{folder} does not exist on {revision}", "EntryNotFound")
            entries, folders = [], set()
            for path, oid in sorted(commit.files.items()):
                if not path.startswith(prefix):
                    continue
                relative = path[len(prefix) :].split("/")
                for depth in range(1, len(relative)):
                    if recursive or depth == 1:
                        folders.add(prefix + "/".join(relative[:depth]))
                if recursive or len(relative) == 1:
                    entries.append(self._entry(path, oid))
        entries += [
            {"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0}
            for f in sorted(folders)
        ]
        self._json(200, entries)

    def _paths_info(self, repo: Repo, revision: str, body: bytes):
        content_type = self.headers.get("Content-Type", "")
        if "json" in content_type:
            paths = json.loads(body or b"{}").get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        with self.hub._lock:
            commit = self.hub.commit_of(repo, revision)
            entries = []
            for path in paths:
                path = path.strip("/")
                if path in commit.files:
                    entries.append(self._entry(path, commit.files[path]))
                elif any(p.startswith(path + "/") for p in commit.files) or path == "":
                    entries.append(
                        {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0}
                    )
        self._json(200, entries)

    def _preupload(self, repo: Repo, revision: str, payload: dict):
        with self.hub._lock:
            commit = self.hub.commit_of(repo, revision)
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": commit.files.get(f["path"])}
                for f in payload.get("files", [])
            ]
        self._json(200, {"files": files, "commitOid": commit.sha})

    def _commit(self, repo: Repo, revision: str, body: bytes):
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        hub = self.hub
        with hub._lock:
            if revision not in repo.branches:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            head = repo.commits[repo.branches[revision]]
            if header.get("parentCommit") and header["parentCommit"] != head.sha:
                raise HubError(412, f"parent commit {header['parentCommit']} is not the head of {revision}")
            files = dict(head.files)
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HubError(400, f"unsupported encoding {value.get('encoding')!r}")
                    files[value["path"]] = hub._store_blob(base64.b64decode(value["content"]))
                elif key == "deletedFile":
                    if value["path"] not in files:
                        raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                    del files[value["path"]]
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: o for p, o in files.items() if not p.startswith(prefix)}
                else:  # lfsFile: this server only ever asks for regular uploads
                    raise HubError(400, f"unsupported commit operation {key!r}")
            commit = hub._new_commit(repo, head.sha, files, header.get("summary") or "")
            repo.branches[revision] = commit.sha
        url = f"{hub.url}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{commit.sha}"
        self._json(200, {"success": True, "commitOid": commit.sha, "commitUrl": url, "pullRequestUrl": None})

    def _variables(self, repo: Repo, payload: dict | None):
        """Space variables: POST {key, value, description?} sets one; both methods answer with all of them."""
        with self.hub._lock:
            if payload is not None:
                if not payload.get("key") or not isinstance(payload.get("value"), str):
                    raise HubError(400, "a Space variable needs a key and a string value")
                updated = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
                repo.variables[payload["key"]] = {
                    "value": payload["value"],
                    "description": payload.get("description"),
                    "updatedAt": updated,
                }
            self._json(200, {key: dict(value) for key, value in repo.variables.items()})

    def _create_branch(self, repo: Repo, branch: str, payload: dict):
        with self.hub._lock:
            if branch in repo.branches:
                raise HubError(409, f"Reference refs/heads/{branch} already exists")
            start = self.hub.commit_of(repo, payload.get("startingPoint") or "main")
            repo.branches[branch] = start.sha
        self._json(200, {})

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str):
        hub = self.hub
        repo = hub.repo(repo_id, repo_type)
        hub._readable(repo, self.headers)
        with hub._lock:
            commit = hub.commit_of(repo, revision)
            oid = commit.files.get(path)
        if oid is None:
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
        data = hub.read_blob(oid)
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{oid}"', "Accept-Ranges": "bytes"}
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start : end + 1], headers, "application/octet-stream")
        self._send(200, data, headers, "application/octet-stream")


def validate_card_metadata(content: str) -> list[str]:
    """What the Hub's `/api/validate-yaml` checks, in brief: a YAML mapping in the front matter, list-
    valued tags/datasets/metrics, and a well-formed `model-index` (task type, dataset type and name,
    metric type and numeric value)."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.DOTALL)
    if not match:
        return []  # a card without metadata is valid (the Hub only warns)
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as error:
        return [f"YAML front matter does not parse: {error}"]
    if data is None:
        return []
    if not isinstance(data, dict):
        return ["YAML front matter must be a mapping"]
    errors = []
    for key in ("tags", "datasets", "metrics"):
        if key in data and not (isinstance(data[key], list) and all(isinstance(v, str) for v in data[key])):
            errors.append(f'"{key}" must be a list of strings')
    if "license" in data and not isinstance(data["license"], str):
        errors.append('"license" must be a string')
    for entry in data.get("model-index") or []:
        if not isinstance(entry, dict) or not entry.get("name"):
            errors.append('"model-index" entries need a "name"')
            continue
        for result in entry.get("results") or []:
            if not (result.get("task") or {}).get("type"):
                errors.append('"model-index" results need "task.type"')
            dataset = result.get("dataset") or {}
            if not dataset.get("type") or not dataset.get("name"):
                errors.append('"model-index" results need "dataset.type" and "dataset.name"')
            for metric in result.get("metrics") or []:
                if not metric.get("type") or not isinstance(metric.get("value"), (int, float)):
                    errors.append(f'"model-index" metric {metric!r} needs "type" and a numeric "value"')
    return errors


@pytest.fixture(name="hub")
def hub_fixture(tmp_path_factory):
    """A started `LoopbackHub` storing its repos in a fresh temporary folder."""
    server = LoopbackHub(tmp_path_factory.mktemp("loopback_hub")).start()
    yield server
    server.stop()
