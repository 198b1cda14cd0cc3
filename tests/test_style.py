"""The tree stays clean under ruff (lint and format) and within the size limits of CONTRIBUTING.md."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = ("mirror_unet_hf", "train")
MODEL_FILES = {"configuration_mirror_unet.py", "modeling_mirror_unet.py"}  # one-model-one-file, as transformers
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500


def ruff() -> str:
    found = shutil.which("ruff") or shutil.which("ruff", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]' brings the pinned version)")
    return found


def python_files() -> list[Path]:
    return sorted(p for folder in CODE for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff_passes_on_the_whole_tree(command):
    result = subprocess.run([ruff(), *command], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"ruff {' '.join(command)} failed:\n{result.stdout}{result.stderr}"


def test_functions_are_short():
    long = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_modules_are_focused():
    large = [
        f"{path.relative_to(ROOT)} ({n} lines)"
        for path in python_files()
        if path.name not in MODEL_FILES and (n := path.read_text(encoding="utf-8").count("\n")) > MAX_MODULE_LINES
    ]
    assert not large, f"modules over {MAX_MODULE_LINES} lines: {large}"


def test_no_module_imports_another_modules_private_names():
    offending = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or node.level):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    offending.append(
                        f"{path.relative_to(ROOT)}: from {'.' * node.level}{node.module or ''} import {private}"
                    )
    assert not offending, offending
