"""Publishing checkpoints: `push_checkpoint` / `mirror-unet push` against the loopback Hub, then loading by
Hub id with real clients (remote code without the package, the package itself, offline from the cache)."""

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest_hub import (
    INPUT_SIZE,
    WITHOUT_PACKAGE,
    autopet_metrics,
    folder_digest,
    logits,
    run_python,
    save_checkpoint,
    small_config,
    train_briefly,
)
from hub_server import LoopbackHub, hub_fixture  # noqa: F401  (the `hub` fixture)
from huggingface_hub import ModelCard, constants, hf_hub_download
from huggingface_hub.errors import RepositoryNotFoundError
from safetensors.torch import save_file

from mirror_unet_hf.cli import main
from mirror_unet_hf.errors import UserInputError
from mirror_unet_hf.hub import HubRequestError, push_checkpoint

REPO = "tester/mirror-unet-small"
BRANCH = "experiment"
CHECKPOINT_FILES = {
    ".gitattributes",
    "README.md",
    "config.json",
    "model.safetensors",
    "configuration_mirror_unet.py",
    "modeling_mirror_unet.py",
    "metrics.json",
    "training_args.json",
    # the image processor and the mirror-unet-segmentation pipeline, with the modules it runs
    "preprocessor_config.json",
    "image_processing_mirror_unet.py",
    "pipeline_mirror_unet.py",
    "sliding_window.py",
    "window_merging.py",
    "errors.py",
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two briefly trained checkpoints (different seeds, so different weights), inputs and their logits."""
    root = tmp_path_factory.mktemp("checkpoints")
    config = small_config("autopet-v3")
    args = {"preset": "autopet-v3", "dataset": "phantoms", "max_steps": 3, "phantoms": True}
    model_a, model_b = train_briefly(config, seed=0), train_briefly(config, seed=1)
    a = save_checkpoint(model_a, root / "a", metrics=autopet_metrics(dataset="phantoms"), training_args=args)
    b = save_checkpoint(model_b, root / "b", metrics=autopet_metrics(dice=0.5, dataset="phantoms"), training_args=args)
    torch.manual_seed(2)
    x = torch.rand(1, 2, INPUT_SIZE, INPUT_SIZE, INPUT_SIZE)
    expected = root / "expected.safetensors"
    save_file({"x": x, "a": logits(model_a, x), "b": logits(model_b, x)}, expected)
    assert not torch.equal(logits(model_a, x), logits(model_b, x))
    return {"a": a, "b": b, "expected": expected}


def push_both(hub: LoopbackHub, checkpoints: dict) -> str:
    url = push_checkpoint(checkpoints["a"], REPO, token=hub.token, endpoint=hub.url)
    push_checkpoint(checkpoints["b"], REPO, revision=BRANCH, token=hub.token, endpoint=hub.url)
    return url


# ---------------------------------------------------------------------------------------------
# What lands on the Hub
# ---------------------------------------------------------------------------------------------


def test_push_uploads_everything_in_one_commit_and_returns_the_repo_url(hub, checkpoints):
    url = push_checkpoint(checkpoints["a"], REPO, token=hub.token, endpoint=hub.url, commit_message="first weights")
    assert url == f"{hub.url}/{REPO}"
    history = hub.history(REPO)
    assert [c.title for c in history] == ["first weights", "initial commit"]  # one commit for the push
    assert [r for r in hub.requests if "/commit/" in r[1]] == [("POST", f"/api/models/{REPO}/commit/main", 200)]
    files = hub.files(REPO)
    assert set(files) == CHECKPOINT_FILES
    for name in CHECKPOINT_FILES - {".gitattributes", "README.md", "training_args.json"}:
        assert files[name] == (checkpoints["a"] / name).read_bytes(), name
    card = ModelCard(files["README.md"].decode())
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == autopet_metrics()["metrics"]


def test_push_never_writes_to_the_checkpoint_folder(hub, checkpoints):
    before = folder_digest(checkpoints["a"])
    push_checkpoint(checkpoints["a"], REPO, token=hub.token, endpoint=hub.url)
    assert folder_digest(checkpoints["a"]) == before


def test_push_to_a_revision_creates_the_branch_and_leaves_main_alone(hub, checkpoints):
    push_both(hub, checkpoints)
    main_files, branch_files = hub.files(REPO, "main"), hub.files(REPO, BRANCH)
    assert main_files["model.safetensors"] == (checkpoints["a"] / "model.safetensors").read_bytes()
    assert branch_files["model.safetensors"] == (checkpoints["b"] / "model.safetensors").read_bytes()
    main_head = hub.history(REPO, "main")[0].sha
    assert hub.history(REPO, BRANCH)[1].sha == main_head  # the branch starts from main
    assert f'revision="{BRANCH}"' in branch_files["README.md"].decode()
    assert "revision=" not in main_files["README.md"].decode()


def test_private_repo_needs_the_token_to_download(hub, checkpoints, tmp_path):
    push_checkpoint(checkpoints["a"], "tester/private-model", private=True, token=hub.token, endpoint=hub.url)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(
            "tester/private-model", "config.json", endpoint=hub.url, token=False, cache_dir=tmp_path / "anon"
        )
    path = hf_hub_download(
        "tester/private-model", "config.json", endpoint=hub.url, token=hub.token, cache_dir=tmp_path / "auth"
    )
    assert Path(path).read_bytes() == (checkpoints["a"] / "config.json").read_bytes()


# ---------------------------------------------------------------------------------------------
# Loading by Hub id in fresh processes
# ---------------------------------------------------------------------------------------------


def how_to_use_blocks(card: str) -> list[str]:
    section = re.search(r"^## How to use\n(.*?)(?=^## )", card, re.MULTILINE | re.DOTALL).group(1)
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


# Compares the logits of each revision, loaded by Hub id as remote code, with the original models'.
LOAD_REMOTE = f"""
import os, torch
from safetensors.torch import load_file
from transformers import AutoModel
expected = load_file(sys.argv[1])
for revision, key in (("main", "a"), ("{BRANCH}", "b")):
    model = AutoModel.from_pretrained("{REPO}", trust_remote_code=True, revision=revision).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        out = model(expected["x"]).logits
    assert torch.equal(out, expected[key]), f"revision {{revision}}: logits differ"
print("LOADED", os.environ.get("HF_HUB_OFFLINE", "online"))
"""


def write_card_study(folder: Path) -> None:
    """The study files the cards' pipeline example reads (`CTres.nii.gz`, `SUV.nii.gz`): a small phantom."""
    from mirror_unet_hf.data import make_phantoms

    make_phantoms("autopet", folder / "phantoms", n=1, seed=3, shape=(40, 40, 32))
    study = next(p.parent for p in (folder / "phantoms").rglob("SUV.nii.gz"))
    for name in ("CTres.nii.gz", "SUV.nii.gz"):
        (folder / name).write_bytes((study / name).read_bytes())


@pytest.fixture(scope="module")
def published(tmp_path_factory, checkpoints):
    """Both checkpoints on a loopback Hub, and one fresh process without the package (empty HF_HOME)
    that first runs the python blocks of both cards' "How to use", as a reader would, then LOAD_REMOTE."""
    root = tmp_path_factory.mktemp("published")
    write_card_study(root)
    with LoopbackHub(root / "hub") as hub:
        push_both(hub, checkpoints)
        blocks = [b for rev in ("main", BRANCH) for b in how_to_use_blocks(hub.files(REPO, rev)["README.md"].decode())]
        script = WITHOUT_PACKAGE + "".join(f"\nexec({block!r}, {{}})\nprint('BLOCK-DONE')\n" for block in blocks)
        hf_home = root / "hf_home"
        online = run_python(script + LOAD_REMOTE, hub.env(hf_home), root, str(checkpoints["expected"]))
        yield SimpleNamespace(hub=hub, root=root, hf_home=hf_home, blocks=blocks, online=online)


def test_hub_id_loads_without_the_package_with_identical_outputs(published):
    assert published.online.returncode == 0, published.online.stdout + published.online.stderr
    assert "LOADED online" in published.online.stdout
    heads = {published.hub.history(REPO, rev)[0].sha for rev in ("main", BRANCH)}
    fetched = {p.split("/")[4] for m, p, _ in published.hub.requests if m == "GET" and p.endswith("/model.safetensors")}
    assert fetched == heads  # each revision's weights came from the server


def test_every_code_block_of_the_cards_how_to_use_runs_against_the_hub(published):
    assert len(published.blocks) == 4  # per card (main and the branch): the pipeline, the network alone
    assert published.online.returncode == 0, published.online.stdout + published.online.stderr
    assert published.online.stdout.count("BLOCK-DONE") == 4
    assert "torch.Size([1, 2, 96, 96, 96])" in published.online.stdout  # the network block's own print
    assert published.online.stdout.count("{0: 'background', 1: 'lesion'}") == 2  # the pipeline block's print
    assert (published.root / "seg.nii.gz").is_file()  # the pipeline block's mask


def test_hub_id_loads_offline_from_the_cache_without_the_server(published, checkpoints):
    assert published.online.returncode == 0, "the online load has to fill the cache first"
    seen = len(published.hub.requests)
    # A dead endpoint on top of HF_HUB_OFFLINE: any request would fail, and the server log must not grow.
    env = published.hub.env(published.hf_home, HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    offline = run_python(WITHOUT_PACKAGE + LOAD_REMOTE, env, published.root, str(checkpoints["expected"]))
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert "LOADED 1" in offline.stdout
    assert len(published.hub.requests) == seen


LOAD_WITH_PACKAGE = f"""
import sys, torch
from safetensors.torch import load_file
from mirror_unet_hf import MirrorUNetModel
expected = load_file(sys.argv[1])
for revision, key in (("main", "a"), ("{BRANCH}", "b")):
    model = MirrorUNetModel.from_pretrained("{REPO}", revision=revision).eval()
    assert type(model) is MirrorUNetModel
    with torch.no_grad():
        assert torch.equal(model(expected["x"]).logits, expected[key]), revision
print("PACKAGE-OK")
"""


def test_package_model_class_loads_each_revision_by_hub_id(published, checkpoints, tmp_path):
    result = run_python(
        LOAD_WITH_PACKAGE, published.hub.env(tmp_path / "hf_home"), tmp_path, str(checkpoints["expected"])
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PACKAGE-OK" in result.stdout


# ---------------------------------------------------------------------------------------------
# The command line, and what goes wrong
# ---------------------------------------------------------------------------------------------


def test_cli_push_in_a_fresh_process_prints_the_repo_url(hub, checkpoints, tmp_path):
    metrics = tmp_path / "other_metrics.json"
    metrics.write_text((checkpoints["b"] / "metrics.json").read_text())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mirror_unet_hf.cli",
            "push",
            "--model",
            str(checkpoints["a"]),
            "--repo-id",
            "tester/cli-model",
            "--metrics",
            str(metrics),
            "--revision",
            "v1",
            "--commit-message",
            "from the CLI",
        ],
        env={**os.environ, **hub.env(tmp_path / "hf_home")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{hub.url}/tester/cli-model"
    assert hub.history("tester/cli-model", "v1")[0].title == "from the CLI"
    card = ModelCard(hub.files("tester/cli-model", "v1")["README.md"].decode())
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}["dice"] == 0.5  # from --metrics


@pytest.fixture
def cli_env(hub, monkeypatch):
    """In-process CLI runs against the loopback Hub: HF_ENDPOINT is read at import, so set what it sets."""
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    return hub


def push_cli(checkpoint: Path, *extra: str) -> list[str]:
    return ["push", "--model", str(checkpoint), "--repo-id", REPO, *extra]


@pytest.mark.parametrize(
    "failure, expected",
    [
        (
            lambda hub: hub.fail(500, "/api/repos/create"),
            "answered 500 Internal Server Error to POST /api/repos/create",
        ),
        (
            lambda hub: hub.fail(500, "/commit/"),
            f"answered 500 Internal Server Error to POST /api/models/{REPO}/commit/main",
        ),
        (lambda hub: hub.fail(401, "/api/repos/create"), "answered 401 Unauthorized to POST /api/repos/create"),
        (lambda hub: hub.hang("/commit/", seconds=30), "no answer from http://127.0.0.1:"),
    ],
    ids=["500-create", "500-commit", "401", "timeout"],
)
def test_server_failures_give_one_line_and_exit_2_and_leave_the_folder(cli_env, checkpoints, capsys, failure, expected):
    hub = cli_env
    failure(hub)
    before = folder_digest(checkpoints["a"])
    assert main(push_cli(checkpoints["a"], "--timeout", "1")) == 2
    err = capsys.readouterr().err
    assert err.startswith("mirror-unet push: error: pushing to tester/mirror-unet-small: ") and err.count("\n") == 1, (
        err
    )
    assert expected in err and "(the local folder was not changed)" in err
    assert folder_digest(checkpoints["a"]) == before
    repo = hub.repos.get(("model", REPO))
    assert repo is None or [c.title for c in hub.history(REPO)] == ["initial commit"]  # nothing was committed


def test_a_token_the_hub_rejects_is_named_as_the_problem(cli_env, checkpoints, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_the_right_one")
    assert main(push_cli(checkpoints["a"])) == 2
    err = capsys.readouterr().err
    assert "401 Unauthorized" in err and "check the token (HF_TOKEN or `hf auth login`)" in err


def test_no_token_anywhere_is_a_user_error_before_any_request(cli_env, checkpoints, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token_here"))
    assert main(push_cli(checkpoints["a"])) == 2
    assert "no Hugging Face token found; set HF_TOKEN, run `hf auth login`" in capsys.readouterr().err
    assert cli_env.requests == []


def test_a_saved_login_token_is_used(cli_env, checkpoints, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    token_file = tmp_path / "token"
    token_file.write_text(cli_env.token)  # what `hf auth login` stores
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(token_file))
    assert main(push_cli(checkpoints["a"])) == 0
    assert set(cli_env.files(REPO)) == CHECKPOINT_FILES


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.pt", "optimizer.pkl"])
def test_pickle_weights_are_refused_with_the_reason(cli_env, checkpoints, tmp_path, capsys, weights):
    folder = tmp_path / "with_pickle"
    folder.mkdir()
    for path in checkpoints["a"].iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    torch.save({"w": torch.zeros(1)}, folder / weights)
    assert main(push_cli(folder)) == 2
    err = capsys.readouterr().err
    assert f"holds pickle-based weights ({weights}); loading them can run arbitrary code" in err
    assert cli_env.requests == []


def test_incomplete_folder_names_the_missing_files(cli_env, checkpoints, tmp_path, capsys):
    folder = tmp_path / "incomplete"
    folder.mkdir()
    (folder / "config.json").write_bytes((checkpoints["a"] / "config.json").read_bytes())
    (folder / "model.safetensors").write_bytes((checkpoints["a"] / "model.safetensors").read_bytes())
    assert main(push_cli(folder)) == 2
    assert "lacks configuration_mirror_unet.py, modeling_mirror_unet.py" in capsys.readouterr().err


@pytest.mark.parametrize("repo_id", ["no-namespace", "a/b/c", "ns/bad name"])
def test_malformed_repo_id_is_a_user_error(checkpoints, repo_id):
    with pytest.raises(UserInputError, match=re.escape(f"--repo-id {repo_id!r} is not a Hub repo id")):
        push_checkpoint(checkpoints["a"], repo_id, token="unused", endpoint="http://127.0.0.1:9")


def test_an_unreachable_hub_is_a_hub_error(checkpoints):
    with pytest.raises(HubRequestError, match="cannot reach http://127.0.0.1:9"):
        push_checkpoint(checkpoints["a"], REPO, token="t", endpoint="http://127.0.0.1:9", timeout=2)
