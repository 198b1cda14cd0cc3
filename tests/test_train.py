"""train/train.py: multi-process equivalence, kill-and-resume, outputs, bad input.

Runs the real script (torchrun for two CPU processes) on small phantoms with a reduced-width model.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train" / "train.py"


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    from mirror_unet_hf.data import make_phantoms

    folder = tmp_path_factory.mktemp("phantoms")
    make_phantoms("autopet", folder, 6, seed=0, shape=(64, 64, 48))
    return folder


def common(phantom_dir, tmp_path, norm="instance", preset="autopet-v2", **model):
    return [
        "--preset",
        preset,
        "--model_overrides",
        json.dumps({"channels": [4, 8, 16, 32, 64], "norm": norm, **model}),
        "--patch_size",
        "32",
        "32",
        "32",
        "--data_dir",
        str(phantom_dir),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--eval_steps",
        "100",
        "--num_workers",
        "0",
        "--report_to",
        "none",
        "--lr_decay_every",
        "100",
    ]


def train_env(extra=None) -> dict:
    # One thread per process: on a shared 2-core machine spinning OpenMP threads make 6 steps take 30 s.
    # Runs that are compared must use the same thread count (it changes float summation order).
    return {
        "OMP_NUM_THREADS": "1",
        **os.environ,
        "HF_HOME": os.environ.get("HF_HOME", "/tmp/hf-home-tests"),
        **(extra or {}),
    }


def run(args, env=None, timeout=600, launcher=None):
    """Run train.py in its own process group; on timeout the whole group (torchrun's workers too) is killed."""
    command = (launcher or [sys.executable]) + [str(SCRIPT), *args]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=train_env(env), start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def weights(folder):
    return {
        k: v
        for k, v in load_file(folder / "model.safetensors").items()
        if "running" not in k and "num_batches" not in k
    }


def max_difference(a, b):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def failure_report(stderr: str) -> str:
    """The lines of every rank's own traceback (a crashed rank's error is often far from the end), then the tail."""
    ranks = [line for line in stderr.splitlines() if line.startswith(("[rank0]", "[rank1]"))]
    return "\n".join(ranks[-60:]) + "\n...\n" + stderr[-2000:]


def two_process_difference(phantom_dir, tmp_path, norm, **model):
    # SGD: Adam divides by sqrt(v) + eps, which turns float-summation noise in parameters whose exact
    # gradient is zero (conv biases right before a norm) into steps of ~lr·noise/eps; measured with Adam
    # at lr 1e-3 the same runs differ by 0.8e-4 to 3e-4, all of it in those parameters' neighbourhood.
    base = common(phantom_dir, tmp_path, norm=norm, **model) + [
        "--max_steps",
        "4",
        "--checkpointing_steps",
        "4",
        "--optimizer",
        "sgd",
        "--learning_rate",
        "0.01",
    ]
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    two = run(
        base + ["--per_device_train_batch_size", "2", "--output_dir", str(tmp_path / f"two-{norm}")],
        env={"ACCELERATE_USE_CPU": "1"},
        launcher=torchrun,
    )
    assert two.returncode == 0, failure_report(two.stderr)
    args = json.loads((tmp_path / f"two-{norm}" / "final" / "training_args.json").read_text())
    assert args["num_processes"] == 2, "torchrun must give two real processes"
    one = run(base + ["--per_device_train_batch_size", "4", "--output_dir", str(tmp_path / f"one-{norm}")])
    assert one.returncode == 0, one.stderr[-3000:]
    return max_difference(weights(tmp_path / f"two-{norm}" / "final"), weights(tmp_path / f"one-{norm}" / "final"))


@pytest.mark.slow
def test_two_processes_with_half_batches_match_one_process(phantom_dir, tmp_path):
    """Instance norm is per sample and the losses are per-sample means, so DDP's averaged gradients equal
    the full-batch gradients up to float summation order."""
    assert two_process_difference(phantom_dir, tmp_path, "instance") < 1e-5


@pytest.mark.slow
def test_batch_dice_pools_the_global_batch_so_two_processes_match_one(phantom_dir, tmp_path):
    """The official recipe's loss settings (batch Dice, Dice and CE weighted 0.5, one MSE over the
    reconstructions) through train.py with two processes. On these phantoms a Dice pooled per process moves
    the weights by only ~2e-6 in 4 steps, so the gradient test below is the one that detects missing pooling."""
    assert (
        two_process_difference(
            phantom_dir,
            tmp_path,
            "instance",
            dice_reduction="batch",
            dice_weight=0.5,
            ce_weight=0.5,
            reconstruction_reduction="mean",
        )
        < 1e-5
    )


GRADIENT_SCRIPT = """
import sys
import torch
import torch.distributed as dist
sys.path.insert(0, sys.argv[3])
from test_train import dice_batch, dice_model
from mirror_unet_hf.training.loop import global_sum

dist.init_process_group("gloo")
rank = dist.get_rank()
model = dice_model()
if sys.argv[1] == "pooled":
    model.dice_sum_reducer = global_sum
x, labels = dice_batch()
model(x[2 * rank : 2 * rank + 2], labels=labels[2 * rank : 2 * rank + 2]).loss.backward()
grads = torch.cat([p.grad.flatten() for p in model.parameters()])
dist.all_reduce(grads)  # what DDP does with the gradients: their mean over the processes
if rank == 0:
    torch.save(grads / 2, sys.argv[2])
dist.destroy_process_group()
"""


def dice_model():
    from mirror_unet_hf import MirrorUNetConfig, MirrorUNetModel

    torch.manual_seed(0)
    config = MirrorUNetConfig.from_preset(
        "autopet-v1", channels=[4, 8, 16, 32, 64], norm="instance", dice_reduction="batch", ce_weight=0.0
    )
    return MirrorUNetModel(config)


def dice_batch():
    """Four samples, lesions only in the first two: a Dice pooled per process differs from the global one."""
    x = torch.rand(4, 2, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.zeros(4, 32, 32, 32, dtype=torch.long)
    labels[0, 4:20, 4:20, 4:20] = 1
    labels[1, 8:16, 8:24, 8:16] = 1
    return x, labels


@pytest.mark.parametrize("mode", ["pooled", "local"])
def test_batch_dice_gradients_of_two_processes_are_the_whole_batch_gradients_only_when_pooled(tmp_path, mode):
    """`global_sum` (a differentiable all-reduce) makes two processes' averaged gradients equal the gradient of
    the whole-batch Dice; without it each process pools only its half, which changes the gradient."""
    model = dice_model()
    x, labels = dice_batch()
    model(x, labels=labels).loss.backward()
    expected = torch.cat([p.grad.flatten() for p in model.parameters()])
    script = tmp_path / "grads.py"
    script.write_text(GRADIENT_SCRIPT)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    command = torchrun + [str(script), mode, str(tmp_path / "grads.pt"), str(Path(__file__).parent)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=train_env())
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(tmp_path / "grads.pt", weights_only=True)
    relative = ((got - expected).norm() / expected.norm()).item()
    if mode == "pooled":
        assert relative < 1e-5
    else:
        assert relative > 1e-3


@pytest.mark.slow
def test_batchnorm_without_sync_breaks_the_equivalence(phantom_dir, tmp_path):
    """The same comparison detects the BatchNorm caveat (per-process batch statistics)."""
    assert two_process_difference(phantom_dir, tmp_path, "batch") > 1e-3


# the authors' code's sampling: lesion-positive studies only (2 of the 5 training phantoms), one study's patches
# per batch, unclipped windows; with 2 patches per step an epoch is 2 steps, so the kill at step 2 ends an epoch
OFFICIAL_SAMPLING = ["--positives_only", "--patches_from_one_study", "--patches_per_volume", "2"]
OFFICIAL_SAMPLING += ["--clip_intensities", "false"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "workers, augment, sampling",
    [("0", "none", []), ("2", "spatial+intensity", []), ("2", "spatial", OFFICIAL_SAMPLING)],
    ids=["no-workers", "workers-augment", "official-sampling"],
)
def test_kill_and_resume_gives_the_weights_of_an_uninterrupted_run(phantom_dir, tmp_path, workers, augment, sampling):
    """autopet-v3 has dropout in its classification head: the resumed run must continue the global RNG stream
    exactly (a DataLoader drawing its workers' seed from it at the resumed epoch's start once shifted it)."""
    model = {"classification_target": "study"} if sampling else {}
    base = common(phantom_dir, tmp_path, preset="autopet-v3", **model) + [
        "--max_steps",
        "6",
        "--checkpointing_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--seed",
        "5",
        "--augment",
        augment,
        *sampling,
    ]
    base[base.index("--num_workers") + 1] = workers
    straight = run(base + ["--output_dir", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr[-3000:]

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), *base, "--output_dir", str(interrupted)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=train_env(),
        start_new_session=True,
    )  # its DataLoader workers are killed with it
    deadline = time.time() + 300
    while not (interrupted / "checkpoints" / "step_2").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert (interrupted / "checkpoints" / "step_2").exists()
    assert not (interrupted / "final").exists(), "the run was killed before it finished"

    resumed = run(base + ["--output_dir", str(interrupted), "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stdout + resumed.stderr
    a, b = weights(tmp_path / "straight" / "final"), weights(interrupted / "final")
    assert all(torch.equal(a[k], b[k]) for k in a), f"max difference {max_difference(a, b)}"


def test_run_writes_best_final_checkpoints_and_metrics(phantom_dir, tmp_path):
    out = tmp_path / "run"
    result = run(
        common(phantom_dir, tmp_path, preset="autopet-v3")
        + [
            "--max_steps",
            "2",
            "--checkpointing_steps",
            "1",
            "--checkpoints_total_limit",
            "1",
            "--eval_steps",
            "2",
            "--output_dir",
            str(out),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_2"]
    for folder in ("best", "final"):
        names = {p.name for p in (out / folder).iterdir()}
        assert {
            "config.json",
            "model.safetensors",
            "modeling_mirror_unet.py",
            "metrics.json",
            "training_args.json",
        } <= names
    metrics = json.loads((out / "final" / "metrics.json").read_text())
    assert metrics["task"] == "autopet" and "fpv_ml" in metrics["metrics"]
    assert "groups" not in metrics, "AutoPET 2022 case ids carry no tracer: no groups"
    assert json.loads((out / "final" / "training_args.json").read_text())["preset"] == "autopet-v3"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--no_such_flag", "1"], "unrecognized arguments: --no_such_flag"),
        (["--preset", "autopet-v9"], "unknown preset 'autopet-v9'"),
        (["--fold", "7"], "--fold 7 is out of range; expected 0..4"),
        (["--patch_size", "40", "40", "40"], "must be three positive multiples of the total stride 16"),
        (["--resume_from_checkpoint", "/nonexistent"], "is not a checkpoint"),
        (["--dataset", "brain_tumour"], "reads ct, pet, which the brain_tumour dataset does not have"),
        (["--patches_from_one_study"], "needs --per_device_train_batch_size equal to --patches_per_volume"),
        (["--overlap", "1.0"], "--overlap is 1.0; expected a fraction in [0, 1)"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_output_untouched(phantom_dir, tmp_path, extra, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = run(
        common(phantom_dir, tmp_path) + ["--output_dir", str(out), "--overwrite_output_dir", *extra], timeout=120
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_balancing_groups_of_a_task_without_groups_is_refused_after_reading_the_data(phantom_dir, tmp_path):
    """AutoPET 2022 case ids carry no tracer: the data has to be read to know (its progress bars come first)."""
    out = tmp_path / "out"
    result = run(common(phantom_dir, tmp_path) + ["--output_dir", str(out), "--balance_groups"], timeout=120)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error: balance_groups needs training studies of two groups or more"), last
    assert last.endswith("no study here has a group") and not (out / "final").exists()


def test_data_dir_without_studies_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run(["--data_dir", str(empty), "--output_dir", str(tmp_path / "o")], timeout=120)
    assert result.returncode == 2 and "holds no AutoPET studies" in result.stderr
    assert not (tmp_path / "o").exists()


def test_non_empty_output_dir_is_not_overwritten(phantom_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = run(common(phantom_dir, tmp_path) + ["--output_dir", str(out), "--max_steps", "1"], timeout=120)
    assert result.returncode == 2 and "is not empty" in result.stderr
    assert (out / "keep.txt").read_text() == "precious" and len(list(out.iterdir())) == 1


def test_checkpointer_lists_only_complete_checkpoints_rotates_by_step_and_resumes(tmp_path):
    from accelerate import Accelerator

    from mirror_unet_hf.errors import UserInputError
    from mirror_unet_hf.training import Checkpointer, TrainerState

    out = tmp_path / "run"
    checkpointer = Checkpointer(out, total_limit=2)
    assert checkpointer.checkpoints() == [] and checkpointer.resolve("latest") is None
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    model, optimizer = accelerator.prepare(model, optimizer)
    out.mkdir()
    state = TrainerState()
    for step in (2, 10, 9):  # step_10 is newer than step_9 although it sorts first as text
        state.step = step
        optimizer.step()
        scheduler.step()
        checkpointer.save(accelerator, state, scheduler)
    (checkpointer.folder / ".step_11.tmp").mkdir()  # a half-written checkpoint is never listed
    assert [p.name for p in checkpointer.checkpoints()] == ["step_9", "step_10"]
    latest = checkpointer.resolve("latest")
    assert latest.name == "step_10"
    assert not [p for p in latest.iterdir() if "scheduler" in p.name]  # its state is JSON, never a pickle
    fresh = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    resumed = checkpointer.load(accelerator, latest, fresh)
    assert (resumed.step, fresh.last_epoch) == (10, 2)
    with pytest.raises(UserInputError, match="not a checkpoint"):
        checkpointer.resolve(str(out))
    (out / "keep.txt").write_text("mine")
    (out / "trainer_state.json").write_text("{}")
    checkpointer.clear_previous_run()
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_yaml_config_sets_flags_and_command_line_wins(tmp_path):
    from mirror_unet_hf.training import parse_args

    config = tmp_path / "c.yaml"
    config.write_text("preset: autopet-v1\nmax_steps: 7\nmodel_overrides: {norm: instance}\n")
    args = parse_args(["--config", str(config), "--max_steps", "9"])
    assert (args.preset, args.max_steps, json.loads(args.model_overrides)) == ("autopet-v1", 9, {"norm": "instance"})
    config.write_text("max_step: 7\n")
    with pytest.raises(ValueError, match="unknown setting\\(s\\) max_step"):
        parse_args(["--config", str(config)])


def test_every_shipped_config_parses_and_builds_its_model_config():
    from mirror_unet_hf.training import build_config, check_args, parse_args

    configs = sorted((ROOT / "train" / "configs").glob("*.yaml"))
    assert {"phantoms-cpu.yaml", "autopet-v1.yaml", "autopet-v3.yaml", "brats-v1.yaml", "brats-v2-rec.yaml"} <= {
        c.name for c in configs
    }
    for path in configs:
        args = parse_args(["--config", str(path)])
        check_args(args)
        config = build_config(args)
        assert config.preset == args.preset


def test_sweep_goes_on_past_failed_cells_lists_them_and_exits_non_zero(tmp_path):
    config = tmp_path / "base.yaml"
    config.write_text("max_steps: 1\nreport_to: none\n")
    out = tmp_path / "sweep"
    # negative loss weights are refused by train.py (exit 2) before any data is touched: every cell fails fast
    command = [
        sys.executable,
        str(ROOT / "train" / "sweep.py"),
        "--config",
        str(config),
        "--output_dir",
        str(out),
        "--values",
        "-1",
        "-2",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("sweep.py: 4 of 4 cells failed")
    for cell in ("rec_-1e+00_cls_-1e+00", "rec_-1e+00_cls_-2e+00", "rec_-2e+00_cls_-1e+00", "rec_-2e+00_cls_-2e+00"):
        assert f"{cell} (exit code 2)" in summary
    rows = (out / "sweep.csv").read_text().strip().splitlines()
    assert len(rows) == 5 and all(row.split(",")[2] == "" for row in rows[1:])  # no metric for a failed cell
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_sweep_usage_errors_are_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train" / "sweep.py"), "--grid", "huge"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()  # the choices' quoting differs between Python versions
    assert line.startswith("sweep.py: error: argument --grid: invalid choice: 'huge'") and "reduced" in line
    assert line.endswith("(see sweep.py --help)")


@pytest.mark.slow
def test_sweep_runs_resumes_and_draws_the_heatmap(phantom_dir, tmp_path):
    config = tmp_path / "base.yaml"
    config.write_text(
        "\n".join(
            [
                "preset: autopet-v3",
                'model_overrides: {"channels": [4, 8, 16, 32, 64], "norm": "instance"}',
                "patch_size: [32, 32, 32]",
                f"data_dir: {phantom_dir}",
                f"cache_dir: {tmp_path / 'cache'}",
                "max_steps: 1",
                "eval_steps: 1",
                "checkpointing_steps: 1",
                "num_workers: 0",
                "report_to: none",
                "",
            ]
        )
    )
    out = tmp_path / "sweep"
    command = [
        sys.executable,
        str(ROOT / "train" / "sweep.py"),
        "--config",
        str(config),
        "--output_dir",
        str(out),
        "--values",
        "0.1",
        "0.001",
    ]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = (out / "sweep.csv").read_text().strip().splitlines()
    assert rows[0] == "lambda_rec,lambda_cls,dice,run" and len(rows) == 5
    png = (out / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    cells = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert cells == ["rec_1e-01_cls_1e-01", "rec_1e-01_cls_1e-03", "rec_1e-03_cls_1e-01", "rec_1e-03_cls_1e-03"]
    lambdas = json.loads((out / "rec_1e-03_cls_1e-01" / "final" / "training_args.json").read_text())
    assert (lambdas["lambda_rec"], lambdas["lambda_cls"]) == (0.001, 0.1)
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done, skipped") == 4
