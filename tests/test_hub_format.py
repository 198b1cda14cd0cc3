"""save_pretrained / from_pretrained, Auto classes and remote code in a fresh process without the package."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForSemanticSegmentation

from mirror_unet_hf import MirrorUNetConfig, MirrorUNetModel


def small_model(preset="autopet-v3", **overrides):
    torch.manual_seed(0)
    config = MirrorUNetConfig.from_preset(preset, **overrides)
    return MirrorUNetModel(config).eval()


def outputs(model, x):
    with torch.no_grad():
        out = model(x)
    return out.logits, out.branch_outputs, out.bottleneck_decoder_output, out.classification_logits


@pytest.mark.parametrize("preset", ["autopet-v3", "brats-v2", "autopet-late-fusion"])
def test_save_and_load_round_trip_gives_identical_outputs(tmp_path, preset):
    model = small_model(preset)
    # train mode once so BatchNorm running statistics differ from their initial values
    model.train()
    with torch.no_grad():
        model(torch.rand(2, len(model.config.modalities), 32, 32, 32))
    model.eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = MirrorUNetModel.from_pretrained(tmp_path).eval()
    x = torch.rand(1, len(model.config.modalities), 32, 32, 32)
    a, b = outputs(model, x), outputs(loaded, x)
    assert torch.equal(a[0], b[0])
    for name in a[1]:
        assert torch.equal(a[1][name], b[1][name])
    for left, right in zip(a[2:], b[2:]):
        assert (left is None and right is None) or torch.equal(left, right)


def test_save_pretrained_writes_code_files_and_full_auto_map(tmp_path):
    small_model().save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_mirror_unet.py", "modeling_mirror_unet.py"} <= files
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_mirror_unet.MirrorUNetConfig",
        "AutoModel": "modeling_mirror_unet.MirrorUNetModel",
        "AutoModelForSemanticSegmentation": "modeling_mirror_unet.MirrorUNetModel",
    }


def test_auto_classes_resolve_in_process(tmp_path):
    model = small_model()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MirrorUNetConfig)
    x = torch.rand(1, 2, 32, 32, 32)
    for auto in (AutoModel, AutoModelForSemanticSegmentation):
        loaded = auto.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, MirrorUNetModel)
        assert torch.equal(outputs(loaded, x)[0], outputs(model, x)[0])
    assert isinstance(AutoModel.from_config(MirrorUNetConfig()), MirrorUNetModel)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["mirror_unet_hf"] = None  # the package must not be importable here
    try:
        import mirror_unet_hf  # noqa: F401
        raise SystemExit("mirror_unet_hf is importable; the test would prove nothing")
    except ImportError:
        pass
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoModelForSemanticSegmentation
    folder, tensors = sys.argv[1], load_file(sys.argv[2])
    for auto in (AutoModel, AutoModelForSemanticSegmentation):
        model = auto.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            out = model(tensors["x"])
        assert torch.equal(out.logits, tensors["logits"]), "logits differ"
        # the global mean pool's reduction order may differ between processes: 1e-9-level noise
        torch.testing.assert_close(out.classification_logits, tensors["cls"], rtol=0, atol=1e-6)
    print("REMOTE-OK")
    """
)


def test_remote_code_loads_in_a_fresh_process_without_the_package(tmp_path):
    model = small_model()
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    x = torch.rand(1, 2, 32, 32, 32)
    logits, _, _, cls = outputs(model, x)
    save_file({"x": x, "logits": logits, "cls": cls}, tmp_path / "expected.safetensors")
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_SCRIPT)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "expected.safetensors")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "REMOTE-OK" in result.stdout
