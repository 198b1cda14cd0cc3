"""End to end: train.py on phantoms → --push_to_hub to the loopback Hub → from_pretrained by id in a fresh
process without the package, outputs identical to the trained folder's."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest_hub import WITHOUT_PACKAGE, run_python
from hub_server import hub_fixture  # noqa: F401  (the `hub` fixture)
from safetensors.torch import save_file

from mirror_unet_hf import MirrorUNetModel
from mirror_unet_hf.data import make_phantoms

pytestmark = pytest.mark.slow  # a real training run, a push, and a fresh interpreter loading by id

ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "tester/phantom-trained-v3"


def test_phantom_training_pushes_a_checkpoint_that_loads_by_id_without_the_package(hub, tmp_path):
    phantoms = make_phantoms("autopet", tmp_path / "phantoms", 6, seed=0, shape=(64, 64, 48))
    out = tmp_path / "run"
    env = hub.env(tmp_path / "hf_home_train", OMP_NUM_THREADS="1")
    train = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train" / "train.py"),
            "--preset",
            "autopet-v3",
            "--model_overrides",
            '{"channels": [4, 8, 16, 32, 64], "norm": "instance"}',
            "--patch_size",
            "32",
            "32",
            "32",
            "--data_dir",
            str(phantoms.parent),
            "--cache_dir",
            str(tmp_path / "cache"),
            "--max_steps",
            "2",
            "--eval_steps",
            "2",
            "--checkpointing_steps",
            "2",
            "--num_workers",
            "0",
            "--report_to",
            "none",
            "--output_dir",
            str(out),
            "--push_to_hub",
            "--hub_model_id",
            REPO_ID,
        ],
        env={**__import__("os").environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert f"{hub.url}/{REPO_ID}" in train.stdout + train.stderr
    pushed = hub.files(REPO_ID)
    assert {"model.safetensors", "config.json", "modeling_mirror_unet.py", "README.md", "metrics.json"} <= set(pushed)
    assert "Trained on synthetic phantoms" in pushed["README.md"].decode()

    local = MirrorUNetModel.from_pretrained(out / "best").eval()
    x = torch.rand(1, 2, 32, 32, 32)
    with torch.no_grad():
        expected = local(x).logits
    save_file({"x": x, "logits": expected}, tmp_path / "expected.safetensors")
    script = (
        WITHOUT_PACKAGE
        + f"""
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel
tensors = load_file({str(tmp_path / "expected.safetensors")!r})
model = AutoModel.from_pretrained({REPO_ID!r}, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(tensors["x"]).logits
assert torch.equal(logits, tensors["logits"]), (logits - tensors["logits"]).abs().max()
print("LOADED-BY-ID")
"""
    )
    result = run_python(script, hub.env(tmp_path / "hf_home_load"), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LOADED-BY-ID" in result.stdout
