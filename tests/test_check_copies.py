"""The committed copies of the model code (next to demo/checkpoint's weights) equal the package files."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "utils" / "check_copies.py"


def load_script():
    spec = importlib.util.spec_from_file_location("check_copies", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_copies = load_script()


def test_the_committed_copies_equal_the_package_files():
    drifted = check_copies.drifted_copies()
    assert not drifted, check_copies.drift_message(drifted)


def test_every_tracked_copy_of_the_model_code_is_guarded():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    names = [f"*/{name}" for name in check_copies.CODE_FILES] + list(check_copies.CODE_FILES)
    listed = subprocess.run(["git", "ls-files", "--", *names], cwd=REPO, capture_output=True, text=True, check=True)
    tracked = {line for line in listed.stdout.splitlines() if line}
    guarded = {copy.relative_to(REPO).as_posix() for _, copy in check_copies.copy_pairs()}
    sources = {f"{check_copies.SOURCE_FOLDER}/{name}" for name in check_copies.CODE_FILES}
    assert guarded <= tracked, f"guarded copies that are not committed: {sorted(guarded - tracked)}"
    assert tracked - sources - guarded == set(), (
        f"copies of the model code not in COPY_FOLDERS of utils/check_copies.py: {sorted(tracked - sources - guarded)}"
    )


@pytest.fixture
def fake_repo(tmp_path) -> Path:
    """A repository-shaped folder whose copies are up to date."""
    for name in check_copies.CODE_FILES:
        source = tmp_path / check_copies.SOURCE_FOLDER / name
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(f"# {name}\n".encode())
        for folder in check_copies.COPY_FOLDERS:
            copy = tmp_path / folder / name
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(source.read_bytes())
    return tmp_path


def test_check_reports_each_drifted_copy_with_the_fix_command_and_fix_rewrites_them(fake_repo, capsys):
    folder = check_copies.COPY_FOLDERS[0]
    assert check_copies.main([], root=fake_repo) == 0
    (fake_repo / folder / "modeling_mirror_unet.py").write_text("# edited by hand\n")
    (fake_repo / folder / "configuration_mirror_unet.py").unlink()
    capsys.readouterr()

    assert check_copies.main([], root=fake_repo) == 1
    err = capsys.readouterr().err
    assert f"{folder}/modeling_mirror_unet.py differs from mirror_unet_hf/modeling_mirror_unet.py" in err
    assert f"{folder}/configuration_mirror_unet.py is missing" in err
    assert "python utils/check_copies.py --fix" in err

    assert check_copies.main(["--fix"], root=fake_repo) == 0
    assert f"rewrote {folder}/modeling_mirror_unet.py" in capsys.readouterr().out
    assert check_copies.drifted_copies(fake_repo) == []
    for name in check_copies.CODE_FILES:
        assert (fake_repo / folder / name).read_bytes() == f"# {name}\n".encode()


def test_the_script_runs_from_another_folder(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout
