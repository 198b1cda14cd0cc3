"""train/train.py killed with SIGKILL at random points, several times in a row (during start-up, during a
checkpoint write, between checkpoints): ``--resume_from_checkpoint latest`` always resumes from the last
complete checkpoint, never a ``.tmp``, and the finished run's weights equal an uninterrupted run's.

``MIRROR_UNET_KILLS`` sets the number of kills (default 4) and ``MIRROR_UNET_KILL_SEED`` their timing seed
(default: a fresh one, printed in any failure message).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest_fuzz import fuzz_report, tried  # noqa: F401 - fuzz_report reports the counts at the end of the session
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # real training processes killed and resumed: minutes on 2 cores

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train" / "train.py"
KILLS = int(os.environ.get("MIRROR_UNET_KILLS", "4"))
SEED = int(os.environ.get("MIRROR_UNET_KILL_SEED", str(random.SystemRandom().randrange(10**6))))
STEP_FOLDER = re.compile(r"^step_(\d+)$")
# where each kill lands, in turn (then at random): start-up, inside a checkpoint write, between checkpoints
MODES = ["start-up", "checkpoint write", "between checkpoints", "checkpoint write"]


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    from mirror_unet_hf.data import make_phantoms

    folder = tmp_path_factory.mktemp("phantoms")
    make_phantoms("autopet", folder, 6, seed=0, shape=(64, 64, 48))
    return folder


def arguments(phantom_dir: Path, cache: Path, output: Path) -> list[str]:
    """The small settings of tests/test_train.py with what makes a resume hard: DataLoader workers, dropout (the
    autopet-v3 classification head) and augmentation; every launch asks to resume, as a pre-emptible job would."""
    return [
        "--preset",
        "autopet-v3",
        "--model_overrides",
        json.dumps({"channels": [4, 8, 16, 32, 64], "norm": "instance"}),
        "--patch_size",
        "32",
        "32",
        "32",
        "--data_dir",
        str(phantom_dir),
        "--cache_dir",
        str(cache),
        "--eval_steps",
        "100",
        "--num_workers",
        "2",
        "--augment",
        "spatial",
        "--report_to",
        "none",
        "--lr_decay_every",
        "100",
        "--max_steps",
        "24",
        "--checkpointing_steps",
        "4",
        "--checkpoints_total_limit",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--output_dir",
        str(output),
        "--resume_from_checkpoint",
        "latest",
    ]


def launch(args: list[str], log: Path) -> subprocess.Popen:
    # one intra-op thread: on a shared 2-core machine two threads per process spin against other load
    # (measured: 6 steps in 1.3 s with one thread, 30 s with two); both runs use the same setting
    env = {
        **os.environ,
        "HF_HOME": os.environ.get("HF_HOME", "/tmp/hf-home-tests"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    with open(log, "w") as stream:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, str(SCRIPT), *args],
            stdout=stream,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def kill(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def checkpoints(output: Path) -> dict[int, Path]:
    """The ``step_N`` folders of a run by step."""
    folder = output / "checkpoints"
    matches = [(STEP_FOLDER.match(p.name), p) for p in (folder.iterdir() if folder.is_dir() else [])]
    return {int(m.group(1)): p for m, p in matches if m}


def latest_complete(output: Path) -> int | None:
    """The newest ``step_N``, checked to be complete: a half-written checkpoint must never carry that name."""
    found = checkpoints(output)
    if not found:
        return None
    step = max(found)
    names = {p.name for p in found[step].iterdir()}
    assert {"trainer_state.json", "model.safetensors", "optimizer.bin"} <= names, (
        f"{found[step]} is incomplete: {names}"
    )
    assert json.loads((found[step] / "trainer_state.json").read_text())["step"] == step
    return step


def staging_folders(output: Path) -> list[Path]:
    folder = output / "checkpoints"
    return sorted(folder.glob(".step_*.tmp")) if folder.is_dir() else []


def wait_and_kill(process: subprocess.Popen, output: Path, mode: str, rng: random.Random, deadline: float) -> str:
    """Kill ``process`` at a point of kind ``mode``; returns where it actually was."""
    known = set(checkpoints(output))
    if mode == "start-up":
        time.sleep(rng.uniform(0.5, 3.0))
    while process.poll() is None and time.time() < deadline and mode != "start-up":
        if mode == "checkpoint write" and staging_folders(output):
            time.sleep(rng.uniform(0.0, 0.03))
            break
        if set(checkpoints(output)) - known:
            if mode == "between checkpoints":
                time.sleep(rng.uniform(0.0, 0.3))
            break
        time.sleep(0.002)
    writing = bool(staging_folders(output))
    finished = process.poll() is not None
    kill(process)
    # a short run can write final/ and be killed on its way out: its results were already complete
    finished = finished or (output / "final").exists()
    return "finished before the kill" if finished else ("inside a checkpoint write" if writing else mode)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def resumed_from(log: Path) -> str | None:
    match = re.search(r"Resumed from (\S+) at step", log.read_text(errors="replace"))
    return match.group(1) if match else None


@pytest.fixture(scope="module")
def straight_run(phantom_dir, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one is compared with."""
    folder = tmp_path_factory.mktemp("straight")
    process = launch(arguments(phantom_dir, folder / "cache", folder / "run"), folder / "run.log")
    try:
        assert process.wait(timeout=600) == 0, (folder / "run.log").read_text()[-3000:]
    finally:
        kill(process)
    return folder / "run"


def test_repeated_sigkill_then_resume_latest_gives_the_uninterrupted_weights(phantom_dir, straight_run, tmp_path):
    rng = random.Random(SEED)
    context = f"(MIRROR_UNET_KILL_SEED={SEED})"
    output = tmp_path / "interrupted"
    args = arguments(phantom_dir, tmp_path / "cache", output)  # its own cache: a start-up kill can hit its build
    history = []
    for attempt in range(KILLS):
        mode = MODES[attempt] if attempt < len(MODES) else rng.choice(MODES)
        expected = latest_complete(output)
        log = tmp_path / f"kill-{attempt}.log"
        where = wait_and_kill(launch(args, log), output, mode, rng, deadline=time.time() + 300)
        history.append(where)
        tried(f"train.py SIGKILL ({where})")
        source = resumed_from(log)
        if source is not None:  # it got far enough to resume: from the newest complete checkpoint
            assert expected is not None and Path(source) == output / "checkpoints" / f"step_{expected}", (
                source,
                expected,
                context,
            )
        latest_complete(output)
        assert not (output / "final").exists() or where == "finished before the kill", context

    expected = latest_complete(output)
    log = tmp_path / "final.log"
    process = launch(args, log)
    try:
        assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        kill(process)
    if expected is not None:
        assert resumed_from(log) == str(output / "checkpoints" / f"step_{expected}"), (log.read_text()[-2000:], context)
    a, b = weights(straight_run / "final"), weights(output / "final")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ after kills at {history} {context}"
    assert staging_folders(output) == [], "a finished run leaves no staging folder"
    assert "inside a checkpoint write" in history or KILLS < 2, (
        f"no kill landed inside a checkpoint write: {history} {context}"
    )


def test_checkpoints_hold_nothing_that_resume_unpickles_without_weights_only(straight_run):
    """Accelerate loads model.safetensors, and optimizer/RNG states with torch.load(weights_only=True); only
    registered custom objects (custom_checkpoint_N.pkl) are unpickled with weights_only=False."""
    for step in checkpoints(straight_run).values():
        assert sorted(p.name for p in step.glob("custom_checkpoint_*.pkl")) == []
