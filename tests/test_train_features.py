"""train/train.py's Accelerate conventions and data stream: an epoch's start leaves the global RNG alone (exact
resume with dropout and workers), fine-tuning from a checkpoint (`--model_name_or_path`), `--max_grad_norm`,
`--gradient_checkpointing`, precision from `accelerate launch`, numeric tracker hyperparameters, the run header."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mirror_unet_hf import MirrorUNetModel
from mirror_unet_hf.errors import UserInputError
from mirror_unet_hf.training import TrainerState, TrainingArguments, build_config, parse_args
from mirror_unet_hf.training.loop import epoch_batches
from mirror_unet_hf.training.model import base_model_id, initial_model, load_base_config
from mirror_unet_hf.training.reporting import tracker_config

ROOT = Path(__file__).resolve().parents[1]
TINY = json.dumps({"channels": [4, 8, 16, 32, 64]})  # the conftest `model_dir` checkpoint's widths


class SeedProbe(torch.utils.data.IterableDataset):
    """Yields, per item, the epoch, the worker's torch seed and a draw from the worker's global torch RNG."""

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        for _ in range(0, 6, info.num_workers):
            yield torch.tensor([self.epoch, torch.initial_seed() % 2**31, int(torch.randint(2**31, ()))])


def test_an_epoch_starts_without_touching_the_global_rng_and_seeds_workers_by_epoch():
    """A DataLoader draws its workers' base seed from the global torch RNG when an epoch starts; in a resumed run
    that draw would come right after the restored RNG state and shift every dropout mask after it."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    probe = SeedProbe()
    loader = accelerator.prepare(torch.utils.data.DataLoader(probe, batch_size=1, num_workers=2))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = [b.tolist() for b in epoch_batches(accelerator, loader, probe, TrainerState(), seed=5)]
    assert torch.equal(torch.get_rng_state(), before), "starting the epoch drew from the global RNG"
    torch.manual_seed(1)  # another global state (a resumed run's): the same workers' seeds and draws
    again = [b.tolist() for b in epoch_batches(accelerator, loader, probe, TrainerState(), seed=5)]
    assert again == first and len(first) == 6
    resumed = [b.tolist() for b in epoch_batches(accelerator, loader, probe, TrainerState(batches_in_epoch=2), seed=5)]
    assert resumed == first[2:]
    later = [b.tolist() for b in epoch_batches(accelerator, loader, probe, TrainerState(epoch=1), seed=5)]
    assert {b[0][1] for b in later}.isdisjoint({b[0][1] for b in first}) and later[0][0][0] == 1


def test_hyperparameters_reach_the_trackers_as_numbers():
    values = tracker_config(TrainingArguments(learning_rate=3e-4, max_grad_norm=1.0))
    assert values["learning_rate"] == 3e-4 and values["max_steps"] == 1000 and values["max_grad_norm"] == 1.0
    assert values["gradient_checkpointing"] is False and values["preset"] == "autopet-v3"
    assert json.loads(values["pos_neg_ratio"]) == [2.0, 1.0]
    assert "model_name_or_path" not in values and "mixed_precision" not in values  # unset: TensorBoard takes no None


def test_new_flags_default_to_today_s_behaviour_and_real_data_configs_augment():
    args = parse_args([])
    assert (args.mixed_precision, args.max_grad_norm, args.gradient_checkpointing, args.augment) == (
        None,
        None,
        False,
        "none",
    )  # None: Accelerate's own choice (accelerate launch / accelerate config)
    assert parse_args(["--config", str(ROOT / "train/configs/phantoms-cpu.yaml")]).augment == "none"
    for name in ("autopet-v1", "autopet-v2", "autopet-v3", "brats-v1", "brats-v2", "brats-v2-rec"):
        assert parse_args(["--config", str(ROOT / f"train/configs/{name}.yaml")]).augment != "none", name


def fine_tuning_args(model_dir, **values) -> TrainingArguments:
    defaults = {"model_overrides": TINY, "patch_size": [32, 32, 32], "model_name_or_path": str(model_dir)}
    return TrainingArguments(**{**defaults, **values})


def test_fine_tuning_starts_from_the_checkpoint_s_weights_with_the_run_s_training_settings(model_dir):
    args = fine_tuning_args(model_dir, lambda_rec=0.5)
    config = build_config(args)
    assert load_base_config(args, config).preset == "autopet-v3"
    model = initial_model(args, config)
    saved = load_file(model_dir / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items() if k in saved)
    assert set(saved) <= set(model.state_dict()) and model.config.lambda_rec == 0.5


@pytest.mark.parametrize(
    "values, message",
    [
        ({"preset": "autopet-v2"}, "classification_head: {'branch': 'pet', 'task': 'lesion_presence'} vs None"),
        ({"model_overrides": json.dumps({"channels": [8, 8, 16, 32, 64]})}, "channels: [4, 8, 16, 32, 64] vs [8, 8"),
    ],
)
def test_a_checkpoint_with_other_heads_or_backbone_is_refused_by_name(model_dir, values, message):
    args = fine_tuning_args(model_dir, **values)
    with pytest.raises(UserInputError, match="does not have the architecture of") as error:
        load_base_config(args, build_config(args))
    assert message in str(error.value)


def test_base_model_is_a_hub_id_or_nothing(tmp_path):
    assert base_model_id(None) is None
    assert base_model_id("ns/mirror-unet-autopet-v3") == "ns/mirror-unet-autopet-v3"  # not a local folder
    assert base_model_id(str(tmp_path)) is None  # a local checkpoint has no Hub id
    snapshot = tmp_path / "hub" / "models--ns--mirror-unet" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    assert base_model_id(str(snapshot)) == "ns/mirror-unet"  # a download in the Hugging Face cache


def test_gradient_checkpointing_recomputes_the_levels_and_gives_the_same_gradients():
    from transformers.modeling_layers import GradientCheckpointingLayer

    args = TrainingArguments(
        preset="autopet-v2",
        model_overrides=json.dumps({"channels": [4, 8, 16, 32, 64], "norm": "instance"}),
        patch_size=[32, 32, 32],
    )
    config = build_config(args)
    torch.manual_seed(0)
    inputs = torch.rand(1, 2, 32, 32, 32)
    labels = (inputs[:, 1] > 0.9).long()
    gradients, calls = [], []
    for checkpointing in (False, True):
        torch.manual_seed(1)
        model = initial_model(TrainingArguments(**{**vars(args), "gradient_checkpointing": checkpointing}), config)
        model.train()
        count = {}  # runs of each level's first convolution (the checkpoint wraps the level's forward, not its hooks)
        for name, level in model.named_modules():
            if isinstance(level, GradientCheckpointingLayer):
                first = next(m for m in level.modules() if isinstance(m, torch.nn.Conv3d))
                first.register_forward_hook(
                    lambda *_, name=name, count=count: count.update({name: count.get(name, 0) + 1})
                )
        model(inputs, labels=labels).loss.backward()
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters()})
        calls.append(count)
    encoders = [name for name in calls[0] if "encoder" in name or "bottleneck" in name]
    assert len(encoders) == 9 and all(calls[1][name] == 2 * calls[0][name] for name in encoders)  # ran again
    assert all(torch.allclose(gradients[0][n], gradients[1][n], atol=1e-6) for n in gradients[0])


def test_run_uses_accelerate_launch_precision_starts_from_base_clips_and_logs_numbers(autopet_phantoms, tmp_path):
    """One short run: `ACCELERATE_MIXED_PRECISION` (what `accelerate launch --mixed_precision` and `accelerate
    config` set) is no longer overridden; the weights start at `--model_name_or_path`'s and, with the gradient
    norm clipped to 1e-9, stay there; the header says so; TensorBoard gets numbers."""
    torch.manual_seed(7)
    base = tmp_path / "base"
    config = build_config(
        TrainingArguments(
            model_overrides=json.dumps({"channels": [4, 8, 16, 32, 64], "norm": "instance"}), patch_size=[32, 32, 32]
        )
    )
    MirrorUNetModel(config).save_pretrained(base)
    out = tmp_path / "run"
    command = [
        sys.executable,
        str(ROOT / "train" / "train.py"),
        "--preset",
        "autopet-v3",
        "--model_overrides",
        json.dumps({"channels": [4, 8, 16, 32, 64], "norm": "instance"}),
        "--patch_size",
        "32",
        "32",
        "32",
        "--data_dir",
        str(autopet_phantoms),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--max_steps",
        "2",
        "--eval_steps",
        "100",
        "--checkpointing_steps",
        "100",
        "--num_workers",
        "2",
        "--optimizer",
        "sgd",
        "--learning_rate",
        "0.01",
        "--weight_decay",
        "0",
        "--max_grad_norm",
        "1e-9",
        "--gradient_checkpointing",
        "--augment",
        "spatial+intensity",
        "--model_name_or_path",
        str(base),
        "--report_to",
        "tensorboard",
        "--output_dir",
        str(out),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HOME": os.environ.get("HF_HOME", "/tmp/hf-home-tests"),
        "ACCELERATE_MIXED_PRECISION": "bf16",
    }
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    header = result.stdout + result.stderr
    assert f"preset        autopet-v3, starting from {base}" in header
    assert "precision     bf16 mixed precision, gradient checkpointing, gradient norm clipped to 1e-09" in header
    assert "augmentation spatial+intensity" in header and "2 DataLoader worker(s)" in header
    recorded = json.loads((out / "final" / "training_args.json").read_text())
    assert (recorded["mixed_precision"], recorded["base_model"]) == ("bf16", None)
    start, end = load_file(base / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert max((start[k] - end[k]).abs().max().item() for k in start) < 1e-7  # an unclipped step moves ~1e-3
    hparams = logged_hyperparameters(out / "logs")
    assert hparams["learning_rate"].number_value == 0.01 and hparams["max_steps"].number_value == 2
    assert hparams["preset"].string_value == "autopet-v3"


def logged_hyperparameters(logs: Path) -> dict:
    """The hyperparameters of the TensorBoard event files under `logs` (the hparams plugin's session start)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    for events in logs.rglob("events.out.tfevents.*"):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                if value.tag == "_hparams_/session_start_info":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    return dict(data.session_start_info.hparams)
    raise AssertionError(f"no hyperparameters logged under {logs}")


def test_validation_summary_reports_each_group_and_all_studies():
    from mirror_unet_hf.validation import split_groups, summarise

    rows = [
        {"case_id": "fdg_a_01-01-2020", "dice": 0.2, "fpv_ml": 1.0},
        {"case_id": "fdg_b_01-01-2020", "dice": None, "fpv_ml": 3.0},
        {"case_id": "psma_c_2020-01-01", "dice": 0.8, "fpv_ml": 0.0},
    ]
    summary = summarise(rows, "autopet3")
    assert summary["dice"] == pytest.approx(0.5) and summary["num_studies"] == 3
    assert (summary["fdg/dice"], summary["fdg/fpv_ml"], summary["fdg/num_studies"]) == (0.2, 2.0, 2)
    assert (summary["psma/dice"], summary["psma/num_studies"]) == (0.8, 1)
    overall, groups = split_groups(summary)
    assert set(groups) == {"fdg", "psma"} and overall == summarise(rows)
    fdg_2022 = [{"case_id": "PETCT_0011_01-01-2000-NA", "dice": 0.5}]
    assert summarise(fdg_2022, "autopet") == summarise(fdg_2022)  # no tracer in the id: no groups


def test_a_study_level_lesion_presence_head_takes_its_target_from_the_labels():
    from mirror_unet_hf.training.data import class_label_source

    def source(**overrides):
        return class_label_source(build_config(TrainingArguments(model_overrides=json.dumps(overrides))))

    assert source() == "diagnosis"  # the patch target comes from the labels inside the model
    assert source(classification_target="study") == "lesion_presence"
    head = {"branch": "pet", "task": "diagnosis", "class_names": ["negative", "lymphoma", "melanoma", "lung_cancer"]}
    assert source(classification_head=head) == "diagnosis"


def test_autopet3_run_balances_tracers_and_validates_fdg_psma_and_all(tmp_path):
    from mirror_unet_hf.data import make_phantoms

    make_phantoms("autopet3", tmp_path / "data", 8, seed=0, shape=(48, 48, 40))
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "train" / "train.py"), "--preset", "autopet-v3", "--dataset", "autopet3"]
    command += ["--model_overrides", json.dumps({"channels": [4, 8, 16, 32, 64], "classification_target": "study"})]
    command += ["--patch_size", "32", "32", "32", "--data_dir", str(tmp_path / "data"), "--output_dir", str(out)]
    command += ["--cache_dir", str(tmp_path / "cache"), "--max_steps", "2", "--eval_steps", "2", "--report_to", "none"]
    command += ["--checkpointing_steps", "2", "--num_workers", "0", "--balance_groups", "--positives_only"]
    command += ["--patches_per_volume", "2", "--per_device_train_batch_size", "2", "--patches_from_one_study"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": os.environ.get("HF_HOME", "/tmp/hf-home-tests")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    recorded = json.loads((out / "final" / "training_args.json").read_text())
    # splits_final.json fold 0: 5 training phantoms, 3 of them lesion-positive (2 FDG, 1 PSMA): 2 draws per tracer
    assert (recorded["train_studies"], recorded["epoch_studies"], recorded["epoch_patches"]) == (5, 4, 8)
    assert "from the 3 lesion-positive of 5, 2 of each group (fdg 2, psma 1 studies)" in result.stdout + result.stderr
    metrics = json.loads((out / "final" / "metrics.json").read_text())
    assert set(metrics["groups"]) == {"fdg", "psma"} and set(metrics["metrics"]) == {"dice", "fpv_ml", "fnv_ml"}
    assert sum(group["num_studies"] for group in metrics["groups"].values()) == metrics["num_studies"] == 3
    assert "psma/dice" in result.stdout + result.stderr  # the validation line on the progress bar
