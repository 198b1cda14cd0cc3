"""Helpers shared by the Hub tests: small briefly trained checkpoints, folder hashes, client subprocesses.

Import explicitly (`from conftest_hub import ...`); the loopback server itself is in `hub_server.py`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import torch

from mirror_unet_hf import MirrorUNetConfig, MirrorUNetModel
from mirror_unet_hf.hub import write_metrics, write_training_args

SMALL_CHANNELS = [4, 8, 16, 32, 64]
INPUT_SIZE = 32  # two strides of 16: the smallest size that exercises every level


def small_config(preset: str = "autopet-v3", **overrides) -> MirrorUNetConfig:
    return MirrorUNetConfig.from_preset(preset, channels=SMALL_CHANNELS, **overrides)


def train_briefly(config: MirrorUNetConfig, seed: int, steps: int = 3) -> MirrorUNetModel:
    """A model after a few Adam steps on random data (seeded): weights and BatchNorm statistics moved."""
    torch.manual_seed(seed)
    model = MirrorUNetModel(config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    m = len(config.modalities)
    for _ in range(steps):
        x = torch.rand(2, m, INPUT_SIZE, INPUT_SIZE, INPUT_SIZE)
        labels = (torch.rand(2, INPUT_SIZE, INPUT_SIZE, INPUT_SIZE) > 0.9).long()
        loss = model(x, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def save_checkpoint(
    model: MirrorUNetModel, folder: Path, metrics: dict | None = None, training_args: dict | None = None
) -> Path:
    """`save_pretrained` plus the JSON files the training script writes next to the weights."""
    model.save_pretrained(folder)
    if metrics is not None:
        write_metrics(folder, metrics)
    if training_args is not None:
        write_training_args(folder, training_args)
    return folder


def autopet_metrics(dice: float = 0.4321, fpv: float = 3.5, fnv: float | None = 1.25, dataset: str = "autopet") -> dict:
    return {
        "task": "autopet",
        "dataset": dataset,
        "split": "validation",
        "num_studies": 12,
        "metrics": {"dice": dice, "fpv_ml": fpv, "fnv_ml": fnv},
    }


def folder_digest(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file below `folder` (and the set of paths itself)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def logits(model: MirrorUNetModel, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits


def run_python(
    script: str, env: dict[str, str], cwd: Path, *args: str, timeout: float = 240
) -> subprocess.CompletedProcess:
    """Run `script` in a fresh interpreter with `env` added to (and overriding) this environment."""
    path = cwd / f"script_{abs(hash(script)) % 10**8}.py"
    path.write_text(script)
    full_env = {**os.environ, **env}
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if key not in env:
            full_env.pop(key, None)
    return subprocess.run(
        [sys.executable, str(path), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


WITHOUT_PACKAGE = """
import sys
sys.modules["mirror_unet_hf"] = None  # the package must not be importable here
try:
    import mirror_unet_hf  # noqa: F401
    raise SystemExit("mirror_unet_hf is importable; the test would prove nothing")
except ImportError:
    pass
"""
