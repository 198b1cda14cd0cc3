"""Loading is safe: weights come only from safetensors, a pickle next to them is never unpickled, pickle-only
folders are refused with the reason, and the installed package runs none of a checkpoint's own code."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import torch
from conftest_fuzz import fuzz_report, tried  # noqa: F401 - fuzz_report reports the counts at the end of the session
from transformers import AutoModel

from mirror_unet_hf import MirrorUNetModel
from mirror_unet_hf.cli import main
from mirror_unet_hf.inference import load_model

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this creates the file ``path``: proof that a file was unpickled."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_the_payload_really_runs_when_unpickled(tmp_path):
    """The proof used below works: torch.load without weights_only runs it."""
    torch.save(Payload(tmp_path / "ran"), tmp_path / "evil.bin")
    # the one deliberate unsafe load: of a file this test wrote itself, to show the trap below is real
    torch.load(tmp_path / "evil.bin", weights_only=False)
    assert (tmp_path / "ran").exists()


@pytest.fixture()
def booby_trapped(model_dir, tmp_path) -> tuple[Path, Path]:
    """A checkpoint folder with model.safetensors AND malicious pytorch_model.bin / optimizer.pt beside it."""
    folder = tmp_path / "trapped"
    shutil.copytree(model_dir, folder)
    marker = tmp_path / "code-ran"
    for name in ("pytorch_model.bin", "optimizer.pt", "training_args.bin"):
        torch.save(Payload(marker), folder / name)
    return folder, marker


def test_load_model_reads_safetensors_and_never_unpickles_the_bin_beside_it(booby_trapped, model_dir):
    folder, marker = booby_trapped
    tried("model loading")
    loaded = load_model(folder)
    assert not marker.exists()
    reference = MirrorUNetModel.from_pretrained(model_dir)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), reference.state_dict().values()))


def test_predict_with_a_booby_trapped_folder_never_unpickles(booby_trapped, tmp_path, capsys):
    folder, marker = booby_trapped
    tried("model loading")
    assert (
        main(
            ["predict", "--model", str(folder), "--study", str(tmp_path / "none"), "--out", str(tmp_path / "o.nii.gz")]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err  # it got past loading the model to the (missing) study
    assert not marker.exists()


def test_auto_model_without_remote_code_reads_safetensors_only(booby_trapped):
    folder, marker = booby_trapped
    tried("model loading")
    AutoModel.from_pretrained(folder)
    assert not marker.exists()


def test_pickle_only_folder_is_refused_with_the_reason_and_not_unpickled(booby_trapped, tmp_path, capsys):
    folder, marker = booby_trapped
    (folder / "model.safetensors").unlink()
    tried("model loading")
    assert main(["predict", "--model", str(folder), "--study", str(tmp_path), "--out", str(tmp_path / "o.nii.gz")]) == 2
    assert "pickle-based weights are refused because loading them can run code" in capsys.readouterr().err
    assert not marker.exists()


def test_push_refuses_a_folder_with_pickles_before_contacting_the_hub(booby_trapped, capsys, monkeypatch):
    folder, marker = booby_trapped
    monkeypatch.setenv("HF_TOKEN", "hf_not_used")
    tried("model loading")
    assert main(["push", "--model", str(folder), "--repo-id", "tester/trapped", "--timeout", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds pickle-based weights" in err and "optimizer.pt" in err, err
    assert not marker.exists()


def test_the_installed_package_runs_none_of_the_checkpoint_code(model_dir, tmp_path):
    """save_pretrained copies configuration/modeling_mirror_unet.py next to the weights for trust_remote_code
    users; with the package imported, loading uses the registered classes and never executes those copies."""
    folder = tmp_path / "tampered"
    shutil.copytree(model_dir, folder)
    marker = tmp_path / "remote-code-ran"
    for name in ("configuration_mirror_unet.py", "modeling_mirror_unet.py"):
        code = (folder / name).read_text()
        (folder / name).write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n{code}")
    tried("model loading")
    load_model(folder)
    AutoModel.from_pretrained(folder)
    assert not marker.exists()


def unsafe_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """Calls that can run pickled code: torch.load without weights_only=True, pickle/dill/joblib/cloudpickle
    loads, allow_pickle=True, trust_remote_code=True."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        literal = {k: v.value for k, v in keywords.items() if isinstance(v, ast.Constant)}
        if name.endswith("torch.load") and literal.get("weights_only") is not True:
            found.append((node.lineno, f"{name} without weights_only=True"))
        elif name.split(".")[0] in {"pickle", "dill", "joblib", "cloudpickle"} and name.split(".")[-1] in {
            "load",
            "loads",
        }:
            found.append((node.lineno, name))
        elif literal.get("allow_pickle") is True or literal.get("trust_remote_code") is True:
            found.append((node.lineno, f"{name} with allow_pickle/trust_remote_code=True"))
    return found


def test_no_unsafe_deserialisation_in_the_package_or_the_training_scripts():
    hits = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in sorted([*(ROOT / "mirror_unet_hf").rglob("*.py"), *(ROOT / "train").rglob("*.py")])
        for line, what in unsafe_calls(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert hits == []


def test_the_unsafe_call_check_finds_what_it_looks_for():
    code = "import torch, pickle\ntorch.load(f)\ntorch.load(f, weights_only=False)\npickle.loads(b)\n"
    code += "np.load(f, allow_pickle=True)\nAutoModel.from_pretrained(d, trust_remote_code=True)\n"
    code += "torch.load(f, weights_only=True)\n"
    assert [line for line, _ in unsafe_calls(ast.parse(code))] == [2, 3, 4, 5, 6]
