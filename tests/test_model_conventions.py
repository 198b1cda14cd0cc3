"""transformers conventions of the model code, and checkpoint compatibility across its renames.

The fixtures in tests/data were recorded with the model code before its building blocks were renamed
(`ConvBlock`-style names → `MirrorUNet…`); they must not be re-recorded to make a test pass, since a
changed state-dict key or output means saved checkpoints no longer load as they did:
- `state_dict_keys.json`: per preset, the count and sha256 of `state_dict_signature` of the model. Re-recorded
  once, deliberately, for the presets with a bottleneck decoder from the paper (autopet-v2, -v3, -v3-diagnosis,
  brats-v2, brats-v2-rec) when they moved to the official decoder (issue 18); their earlier signatures are kept
  as "<preset> light" and must still match: what configs saved without `bottleneck_decoder_style` build;
- `demo_checkpoint_outputs.json`: shape, sum, sum of absolute values and 32 evenly spaced values of
  each output of `demo/checkpoint` on `fixed_input()`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import pytest
import torch
from conftest_hub import WITHOUT_PACKAGE, run_python
from torch import nn

from mirror_unet_hf import MirrorUNetConfig, MirrorUNetModel
from mirror_unet_hf import modeling_mirror_unet as modeling
from mirror_unet_hf.configuration_mirror_unet import PRESETS
from mirror_unet_hf.modeling_mirror_unet import MirrorUNetOutput

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
DEMO_CHECKPOINT = REPO / "demo" / "checkpoint"
SIDE = 16
OUTPUT_FIELDS = ["loss", "logits", "branch_outputs", "bottleneck_decoder_output", "classification_logits", "loss_terms"]


def state_dict_signature(model: nn.Module) -> list[str]:
    """`"<key> [shape]"` per state-dict entry, in order: what a checkpoint must match to load."""
    return [f"{key} {list(value.shape)}" for key, value in model.state_dict().items()]


def fixed_input() -> torch.Tensor:
    return torch.rand(1, 2, 32, 32, 32, generator=torch.Generator().manual_seed(0))


def tiny_model(preset: str = "autopet-v3") -> MirrorUNetModel:
    torch.manual_seed(0)
    return MirrorUNetModel(MirrorUNetConfig.from_preset(preset, channels=[4, 8, 16, 32, 64])).eval()


# ------------------------------------------------------------------ checkpoint compatibility


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_state_dict_keys_of_every_preset_are_unchanged(preset):
    recorded = json.loads((DATA / "state_dict_keys.json").read_text())
    assert preset in recorded, f"preset {preset!r} has no state-dict signature in tests/data/state_dict_keys.json"
    with torch.device("meta"):
        model = MirrorUNetModel(MirrorUNetConfig.from_preset(preset))
    lines = state_dict_signature(model)
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    assert (len(lines), digest) == (recorded[preset]["count"], recorded[preset]["sha256"]), (
        f"the state-dict keys of preset {preset!r} changed, so its saved checkpoints no longer load; "
        f"first keys now: {lines[:5]}"
    )


LIGHT = sorted(k for k in json.loads((DATA / "state_dict_keys.json").read_text()) if k.endswith(" light"))


@pytest.mark.parametrize("entry", LIGHT)
def test_checkpoints_saved_before_the_official_decoder_keep_their_keys(entry):
    """A config.json without `bottleneck_decoder_style` builds the light decoder, whose keys are the old ones."""
    preset = entry.removesuffix(" light")
    recorded = json.loads((DATA / "state_dict_keys.json").read_text())[entry]
    saved = MirrorUNetConfig.from_preset(preset).to_dict()
    del saved["bottleneck_decoder_style"]
    with torch.device("meta"):
        model = MirrorUNetModel(MirrorUNetConfig.from_dict(saved))
    lines = state_dict_signature(model)
    assert (len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()) == (
        recorded["count"],
        recorded["sha256"],
    )


def test_the_old_demo_checkpoint_loads_every_key_and_gives_the_recorded_outputs():
    model, info = MirrorUNetModel.from_pretrained(DEMO_CHECKPOINT, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        out = model.eval()(fixed_input())
    tensors = {
        "logits": out.logits,
        "bottleneck_decoder_output": out.bottleneck_decoder_output,
        "classification_logits": out.classification_logits,
        **{f"branch_outputs.{name}": value for name, value in out.branch_outputs.items()},
    }
    recorded = json.loads((DATA / "demo_checkpoint_outputs.json").read_text())
    assert sorted(tensors) == sorted(recorded)
    for name, expected in recorded.items():
        flat = tensors[name].double().flatten()
        assert list(tensors[name].shape) == expected["shape"], name
        tolerance = 1e-5 * expected["abs_sum"]
        assert abs(flat.abs().sum().item() - expected["abs_sum"]) <= tolerance, name
        assert abs(flat.sum().item() - expected["sum"]) <= tolerance, name
        index = torch.linspace(0, flat.numel() - 1, len(expected["samples"])).long()
        torch.testing.assert_close(
            flat[index], torch.tensor(expected["samples"], dtype=torch.float64), rtol=1e-4, atol=1e-5, msg=name
        )


# ------------------------------------------------------------------ naming


def test_every_building_block_is_named_after_the_model():
    classes = [
        obj
        for _, obj in inspect.getmembers(modeling, inspect.isclass)
        if obj.__module__ == modeling.__name__ and issubclass(obj, nn.Module)
    ]
    assert len(classes) >= 9
    assert [c.__name__ for c in classes if not c.__name__.startswith("MirrorUNet")] == []


def test_no_split_modules_name_classes_the_model_is_built_of():
    model = tiny_model()
    used = {type(module).__name__ for module in model.modules()}
    assert set(model._no_split_modules) <= used, set(model._no_split_modules) - used


# ------------------------------------------------------------------ forward arguments


ACCEPTED = "expected one of: pixel_values, labels, class_labels, parts, return_dict"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"label": 0}, rf"got an unexpected keyword argument 'label'; {ACCEPTED} \(did you mean 'labels'\?\)$"),
        ({"output_hidden_states": True}, rf"got an unexpected keyword argument 'output_hidden_states'; {ACCEPTED}$"),
        (
            {"class_label": 0, "zzz": 1},
            rf"got unexpected keyword arguments 'class_label', 'zzz'; {ACCEPTED} "
            + r"\(did you mean 'class_labels' for 'class_label'\?\)$",
        ),
    ],
)
def test_forward_refuses_an_unknown_keyword_argument(kwargs, message):
    with pytest.raises(TypeError, match=r"^MirrorUNetModel\.forward\(\) " + message):
        tiny_model()(torch.rand(1, 2, SIDE, SIDE, SIDE), **kwargs)


def test_parts_is_keyword_only_so_an_old_positional_return_dict_is_refused():
    with pytest.raises(TypeError, match="positional argument"):
        tiny_model()(torch.rand(1, 2, SIDE, SIDE, SIDE), None, None, False)


def test_output_fields_are_unchanged():
    assert list(MirrorUNetOutput.__dataclass_fields__) == OUTPUT_FIELDS


@pytest.mark.parametrize("with_labels", [False, True])
def test_return_dict_false_gives_the_tuple_of_the_fields_that_are_set(with_labels):
    model = tiny_model()
    x = torch.rand(1, 2, SIDE, SIDE, SIDE)
    labels = {"labels": (torch.rand(1, SIDE, SIDE, SIDE) > 0.9).long()} if with_labels else {}
    with torch.no_grad():
        full = model(x, **labels)
        default = model(x, return_dict=None, **labels)
        plain = model(x, return_dict=False, **labels)
        model.config.return_dict = False
        from_config = model(x, **labels)
        forced = model(x, return_dict=True, **labels)
    assert isinstance(full, MirrorUNetOutput) and isinstance(default, MirrorUNetOutput)
    assert isinstance(forced, MirrorUNetOutput)
    expected = [name for name in OUTPUT_FIELDS if getattr(full, name) is not None]
    assert ("loss" in expected) == with_labels and len(plain) == len(expected)
    for result in (plain, from_config):
        assert type(result) is tuple and len(result) == len(expected)
        for name, value in zip(expected, result):
            if isinstance(value, dict):
                assert value.keys() == getattr(full, name).keys(), name
            else:
                assert torch.equal(value, getattr(full, name)), name


def test_trainer_runs_a_step_and_passes_no_loss_kwargs(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model = tiny_model("autopet-v1").train()
    torch.manual_seed(1)
    rows = [
        {"pixel_values": torch.rand(2, SIDE, SIDE, SIDE), "labels": (torch.rand(SIDE, SIDE, SIDE) > 0.9).long()}
        for _ in range(2)
    ]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows)
    assert trainer.model_accepts_loss_kwargs is False
    before = [p.detach().clone() for p in model.parameters()]
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))


# ------------------------------------------------------------------ remote code


REMOTE_DEMO = (
    WITHOUT_PACKAGE
    + """
import torch
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
x = torch.rand(1, 2, 32, 32, 32)
with torch.no_grad():
    out, plain = model(x), model(x, return_dict=False)
assert torch.equal(plain[0], out.logits)
try:
    model(x, label=None)
    raise SystemExit("a misspelt keyword argument was accepted")
except TypeError as error:
    assert "did you mean 'labels'" in str(error), error
print("REMOTE-OK")
"""
)


def test_the_demo_checkpoint_code_copy_loads_in_a_fresh_process_without_the_package(tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}
    result = run_python(REMOTE_DEMO, env, tmp_path, str(DEMO_CHECKPOINT))
    assert result.returncode == 0 and "REMOTE-OK" in result.stdout, result.stdout + result.stderr


# ------------------------------------------------------------------ label maps

# Per preset: the name of each final-mask class (the logits' channels), which is also the value it is written as.
EXPECTED_ID2LABEL = {
    **{name: {0: "background", 1: "lesion"} for name in PRESETS if name.startswith("autopet")},
    "brats-v1": {0: "background", 1: "edema", 2: "non-enhancing tumour + enhancing tumour"},
    "brats-v2": {0: "background", 1: "edema", 2: "non-enhancing tumour + enhancing tumour"},
    "brats-v2-rec": {0: "background", 1: "edema", 2: "non-enhancing tumour", 3: "enhancing tumour"},
    "brats-4branch": {0: "background", 1: "edema", 2: "non-enhancing tumour", 3: "enhancing tumour"},
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_id2label_names_every_final_class_and_survives_save_and_load(preset, tmp_path):
    config = MirrorUNetConfig.from_preset(preset)
    assert config.id2label == EXPECTED_ID2LABEL[preset]
    assert config.label2id == {name: index for index, name in EXPECTED_ID2LABEL[preset].items()}
    assert config.num_labels == len(config.final_label_values)
    assert list(config.id2label) == config.final_label_values  # every preset writes class k as value k
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["id2label"] == {
        str(k): v for k, v in EXPECTED_ID2LABEL[preset].items()
    }  # for readers without the package
    assert MirrorUNetConfig.from_pretrained(tmp_path).id2label == EXPECTED_ID2LABEL[preset]


def test_the_old_demo_config_without_label_maps_loads_with_them():
    saved = json.loads((DEMO_CHECKPOINT / "config.json").read_text())
    assert "id2label" not in saved and "custom_pipelines" not in saved  # as saved before either existed
    config = MirrorUNetConfig.from_pretrained(DEMO_CHECKPOINT)
    assert config.id2label == {0: "background", 1: "lesion"} and config.label2id == {"background": 0, "lesion": 1}


def test_a_label_map_of_the_wrong_size_is_refused_and_an_own_one_is_kept():
    from mirror_unet_hf.errors import CONFIG_ERRORS

    with pytest.raises(
        CONFIG_ERRORS, match=r"`id2label` has keys \[0, 1\]; expected one name per final-mask class 0..2"
    ):
        MirrorUNetConfig.from_preset("brats-v1", id2label={0: "background", 1: "tumour"})
    config = MirrorUNetConfig.from_preset("brats-v1", id2label={0: "bg", 1: "ed", 2: "tc"})
    assert config.id2label == {0: "bg", 1: "ed", 2: "tc"} and config.label2id == {"bg": 0, "ed": 1, "tc": 2}
