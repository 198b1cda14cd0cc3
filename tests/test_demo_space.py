"""The demo as a Hugging Face Space: the files a Gradio Space needs, and `push_space` against the loopback Hub
(one commit, SDK gradio, the package copied in, the model variable), including running the pushed app."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest_hub import folder_digest, run_python
from hub_server import hub_fixture  # noqa: F401  (the `hub` fixture)
from huggingface_hub import SpaceCard

import mirror_unet_hf
from mirror_unet_hf import MirrorUNetConfig, MirrorUNetModel
from mirror_unet_hf.data import make_phantoms
from mirror_unet_hf.errors import UserInputError
from mirror_unet_hf.hub import push_space, read_space_metadata, space_files

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo"
SPACE = "tester/mirror-unet-demo"


# ------------------------------------------------------------------------------------ the demo folder


def test_the_space_readme_declares_a_gradio_6_app():
    metadata = read_space_metadata(DEMO / "README.md")
    assert metadata["app_file"] == "app.py" and (DEMO / "app.py").is_file()
    assert int(str(metadata["sdk_version"]).split(".")[0]) >= 6
    assert len(metadata["short_description"]) <= 60  # the Hub's limit
    assert metadata["license"] == "apache-2.0"


def requirement_names(lines: list[str]) -> set[str]:
    names = set()
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[<>=!~\[; ]", line)[0].lower().replace("_", "-"))
    return names


def test_space_requirements_cover_the_package_runtime_dependencies():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = requirement_names(pyproject["project"]["dependencies"])
    needed |= requirement_names(
        [d for d in pyproject["project"]["optional-dependencies"]["demo"] if not d.startswith("gradio")]
    )
    listed = requirement_names((DEMO / "requirements.txt").read_text().splitlines())
    assert needed <= listed, f"demo/requirements.txt lacks {sorted(needed - listed)}"
    assert "gradio" not in listed  # the Space's sdk_version decides the gradio version


# ------------------------------------------------------------------------------------------ pushing


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """The repo's demo files with a tiny checkpoint and one phantom example (the committed ones may be absent)."""
    folder = tmp_path_factory.mktemp("space") / "demo"
    folder.mkdir()
    for name in ("app.py", "README.md", "requirements.txt"):
        shutil.copy(DEMO / name, folder / name)
    torch.manual_seed(0)
    config = MirrorUNetConfig.from_preset("autopet-v3", channels=[4, 8, 16, 32, 64], patch_size=[32, 32, 32])
    MirrorUNetModel(config).save_pretrained(folder / "checkpoint")
    dataset = make_phantoms("autopet", folder.parent / "phantoms", 1, seed=1, shape=(32, 32, 32))
    study = min(dataset.rglob("SUV.nii.gz")).parent
    shutil.copytree(study, folder / "examples" / "phantom_1")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"cache")
    (folder / ".DS_Store").write_bytes(b"finder")
    return folder


def test_space_files_are_the_demo_folder_plus_the_package_without_caches(demo_dir):
    files = dict(space_files(demo_dir))
    assert {
        "app.py",
        "README.md",
        "requirements.txt",
        "checkpoint/model.safetensors",
        "checkpoint/config.json",
        "examples/phantom_1/SUV.nii.gz",
        "mirror_unet_hf/__init__.py",
        "mirror_unet_hf/demo/app.py",
        "mirror_unet_hf/demo/handlers.py",
        "mirror_unet_hf/viewer/rendering.py",
        "mirror_unet_hf/data/phantoms/__init__.py",
        "mirror_unet_hf/tasks/autopet.py",
        "mirror_unet_hf/hub_cards/model_card.md.j2",
        "mirror_unet_hf/hub/__init__.py",
        "mirror_unet_hf/hub/space.py",
    } <= set(files)
    package = Path(mirror_unet_hf.__file__).resolve().parent
    sources = {
        f"mirror_unet_hf/{p.relative_to(package).as_posix()}"
        for p in package.rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert sources <= set(files), sources - set(files)  # every module of the package, sub-packages included
    assert not [name for name in files if "__pycache__" in name or name.endswith(".pyc") or "/." in f"/{name}"]


def test_push_space_makes_one_commit_in_a_gradio_space_and_sets_the_model(hub, demo_dir):
    before = folder_digest(demo_dir)
    url = push_space(demo_dir, SPACE, model_id="tester/mirror-unet-autopet", token=hub.token, endpoint=hub.url)
    assert url == f"{hub.url}/spaces/{SPACE}"
    repo = hub.repos[("space", SPACE)]
    assert repo.sdk == "gradio"
    assert [c.title for c in hub.history(SPACE, repo_type="space")] == [
        "Upload the Mirror U-Net demo",
        "initial commit",
    ]
    pushed = hub.files(SPACE, repo_type="space")
    assert set(pushed) == {".gitattributes", *dict(space_files(demo_dir))}
    assert pushed["app.py"] == (demo_dir / "app.py").read_bytes()
    assert repo.variables["MIRROR_UNET_MODEL"]["value"] == "tester/mirror-unet-autopet"
    readme = SpaceCard(pushed["README.md"].decode())
    assert readme.data.models == ["tester/mirror-unet-autopet"]  # the Hub links the Space and the model
    assert readme.text == SpaceCard((demo_dir / "README.md").read_text()).text
    assert readme.data.sdk == "gradio" and readme.data.app_file == "app.py"
    assert folder_digest(demo_dir) == before  # the folder was only read


@pytest.mark.slow  # a fresh interpreter imports torch and Gradio and loads the model
def test_the_pushed_space_builds_its_demo_from_its_own_files(hub, demo_dir, tmp_path):
    push_space(demo_dir, SPACE, token=hub.token, endpoint=hub.url)
    space = tmp_path / "space"
    for name, data in hub.files(SPACE, repo_type="space").items():
        (space / name).parent.mkdir(parents=True, exist_ok=True)
        (space / name).write_bytes(data)
    # As the Space starts it, from its own folder: the copied package, not this checkout's, and the bundled model.
    script = """
import os, sys
sys.path.insert(0, os.getcwd())
import app, mirror_unet_hf
assert mirror_unet_hf.__file__.startswith(os.getcwd()), mirror_unet_hf.__file__
demo = app.build_demo(app.resolve_model(None, app.CHECKPOINT), app.EXAMPLES)
print("BUILT", sorted(d.api_name for d in demo.fns.values() if d.api_name in ("load_example", "segment")))
"""
    env = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "MIRROR_UNET_MODEL": ""}
    result = run_python(script, env, space, timeout=600)  # generous: the machine may be busy
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BUILT ['load_example', 'segment']" in result.stdout


# ------------------------------------------------------------------------------------ what is refused


def test_a_readme_without_the_gradio_sdk_is_refused_before_any_request(hub, demo_dir, tmp_path):
    folder = tmp_path / "demo"
    shutil.copytree(demo_dir, folder)
    readme = (folder / "README.md").read_text().replace("sdk: gradio", "sdk: docker")
    (folder / "README.md").write_text(readme)
    with pytest.raises(UserInputError, match="sdk is 'docker'; this demo is a Gradio Space"):
        push_space(folder, "tester/other-space", token=hub.token, endpoint=hub.url)
    assert hub.requests == []


def test_pickle_files_in_the_demo_folder_are_refused(hub, demo_dir, tmp_path):
    folder = tmp_path / "demo"
    shutil.copytree(demo_dir, folder)
    torch.save({"w": torch.zeros(1)}, folder / "checkpoint" / "pytorch_model.bin")
    with pytest.raises(UserInputError, match=r"holds pickle-based files \(checkpoint/pytorch_model.bin\)"):
        push_space(folder, "tester/other-space", token=hub.token, endpoint=hub.url)
    assert hub.requests == []


def test_a_folder_without_requirements_is_refused(demo_dir, tmp_path):
    folder = tmp_path / "demo"
    shutil.copytree(demo_dir, folder)
    (folder / "requirements.txt").unlink()
    with pytest.raises(UserInputError, match="lacks requirements.txt"):
        push_space(folder, "tester/other-space", token="unused", endpoint="http://127.0.0.1:9")


@pytest.mark.parametrize("model_id", ["not a repo", "a/b/c"])
def test_a_malformed_model_id_is_refused(demo_dir, model_id):
    with pytest.raises(UserInputError, match="is not a Hub repo id"):
        push_space(demo_dir, SPACE, model_id=model_id, token="unused", endpoint="http://127.0.0.1:9")


def test_the_hub_refusing_the_commit_is_one_line_naming_the_request(hub, demo_dir):
    from mirror_unet_hf.hub import HubRequestError

    hub.fail(500, "/commit/")
    with pytest.raises(
        HubRequestError,
        match=rf"pushing to Space {SPACE}: {re.escape(hub.url)} answered 500 .*POST /api/spaces/{SPACE}/commit/main",
    ):
        push_space(demo_dir, SPACE, token=hub.token, endpoint=hub.url, timeout=5)


def test_the_loopback_hub_refuses_a_space_without_sdk(hub):
    from huggingface_hub import HfApi

    with pytest.raises(ValueError, match="No space_sdk provided"):  # the client already insists
        HfApi(endpoint=hub.url, token=hub.token).create_repo("tester/no-sdk", repo_type="space")
    import httpx

    answer = httpx.post(
        f"{hub.url}/api/repos/create",
        json={"name": "no-sdk", "type": "space"},
        headers={"Authorization": f"Bearer {hub.token}"},
    )
    assert answer.status_code == 400 and "sdk" in answer.json()["error"]


def test_push_with_space_publishes_the_model_and_a_space_serving_it(cli_env, demo_dir, capsys):
    from mirror_unet_hf.cli import main

    assert (
        main(
            [
                "push",
                "--model",
                str(demo_dir / "checkpoint"),
                "--repo-id",
                "tester/cli-space-model",
                "--space",
                str(demo_dir),
            ]
        )
        == 0
    )
    model_url, space_url = capsys.readouterr().out.strip().splitlines()
    assert model_url == f"{cli_env.url}/tester/cli-space-model"
    assert space_url == f"{cli_env.url}/spaces/tester/cli-space-model-demo"
    repo = cli_env.repos[("space", "tester/cli-space-model-demo")]
    assert repo.variables["MIRROR_UNET_MODEL"]["value"] == "tester/cli-space-model"
    assert "app.py" in cli_env.files("tester/cli-space-model-demo", repo_type="space")


@pytest.fixture
def cli_env(hub, monkeypatch):
    """In-process CLI against the loopback Hub (HF_ENDPOINT is read at import, so set what it sets)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    return hub
