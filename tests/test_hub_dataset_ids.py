"""Hub dataset ids: a folder published with `mirror-unet push --dataset` loads back with
`load_mirror_dataset(name, "namespace/repo")` (and `train.py --data_dir namespace/repo`), against the
loopback Hub, in fresh processes pointed at it; large folders go up in several commits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest_hub import run_python
from hub_server import hub_fixture  # noqa: F401  (the `hub` fixture)

from mirror_unet_hf.data import load_mirror_dataset, make_phantoms
from mirror_unet_hf.errors import UserInputError
from mirror_unet_hf.hub import push_dataset

REPO = "tester/autopet-phantoms"

LOAD = """
import json, sys
from mirror_unet_hf.data import load_mirror_dataset
ds = load_mirror_dataset("autopet", sys.argv[1], fold=0, num_folds=3, cache_dir=sys.argv[2])
print(json.dumps({split: sorted(ds[split]["case_id"]) for split in ds}))
print(json.dumps([float(ds["train"][0]["pet"].get_fdata().sum())]))
"""


@pytest.fixture(scope="module")
def phantom_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantoms")
    make_phantoms("autopet", out, 4, 0, shape=(24, 24, 24))
    return out


def mirror_unet(*args, env, cwd):
    return subprocess.run(
        [sys.executable, "-m", "mirror_unet_hf.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_pushed_dataset_loads_back_by_repo_id_with_the_same_studies_and_folds(hub, phantom_folder, tmp_path):
    import os

    env = {**os.environ, **hub.env(tmp_path / "hf_home")}
    pushed = mirror_unet("push", "--dataset", str(phantom_folder), "--repo-id", REPO, env=env, cwd=tmp_path)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.strip() == f"{hub.url}/datasets/{REPO}"
    result = run_python(LOAD, hub.env(tmp_path / "hf_home"), tmp_path, REPO, str(tmp_path / "cache_remote"))
    assert result.returncode == 0, result.stderr
    remote_splits, remote_sum = (json.loads(line) for line in result.stdout.strip().splitlines()[-2:])
    local = load_mirror_dataset("autopet", phantom_folder, fold=0, num_folds=3, cache_dir=tmp_path / "cache_local")
    assert remote_splits == {split: sorted(local[split]["case_id"]) for split in local}
    assert remote_sum == [pytest.approx(local["train"][0]["pet"].get_fdata().sum())]
    assert sum(len(v) for v in remote_splits.values()) == 4


def test_large_folder_is_pushed_in_several_commits_with_the_card_last(hub, phantom_folder):
    push_dataset(phantom_folder, REPO, token=hub.token, endpoint=hub.url, max_files_per_commit=5)
    files = sum(1 for p in phantom_folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    parts = -(-files // 5)
    history = [c.title for c in hub.history(REPO, repo_type="dataset")]
    assert history[:-1] == [f"Upload {files} data files (part {n} of {parts})" for n in range(parts, 0, -1)]
    first_part = hub.history(REPO, repo_type="dataset")[-2]
    assert "README.md" not in first_part.files and "metadata.jsonl" not in first_part.files
    assert {"README.md", "metadata.jsonl"} <= set(hub.files(REPO, repo_type="dataset"))


def test_bad_commit_size_is_refused_before_anything_is_sent(hub, phantom_folder):
    with pytest.raises(UserInputError, match="max_files_per_commit must be a positive integer, got 0"):
        push_dataset(phantom_folder, REPO, token=hub.token, endpoint=hub.url, max_files_per_commit=0)
    assert ("dataset", REPO) not in hub.repos


def test_unknown_dataset_repo_is_one_clear_error(hub, tmp_path):
    result = run_python(LOAD, hub.env(tmp_path / "hf_home"), tmp_path, "tester/no-such-data", str(tmp_path / "c"))
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "downloading dataset tester/no-such-data" in last and "Error" in last.split(":")[0], last


def test_push_dataset_cli_refuses_model_only_flags(tmp_path, phantom_folder):
    from mirror_unet_hf.cli import main

    assert main(["push", "--dataset", str(phantom_folder), "--repo-id", REPO, "--space", "demo"]) == 2
