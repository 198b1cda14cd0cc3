"""One error style for every entry point: a user mistake is one line naming the file, flag or value, exit
code 2 and no traceback; ``--debug`` shows the traceback; an internal error keeps its traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest_fuzz import fuzz_report, tried  # noqa: F401 - fuzz_report reports the counts at the end of the session

from mirror_unet_hf.cli import main
from mirror_unet_hf.errors import UserInputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def places(tmp_path) -> dict[str, Path]:
    (tmp_path / "a file").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "model without config").mkdir()
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "a.nii.gz").write_bytes(b"never read")
    return {
        "tmp": tmp_path,
        "file": tmp_path / "a file",
        "empty": tmp_path / "empty",
        "gt": tmp_path / "gt",
        "noconfig": tmp_path / "model without config",
    }


# command line (with {file}, {empty}, {noconfig}, {tmp} filled in) -> what the one line must say
MISTAKES = [
    ("make-phantoms --layout autopet --out {tmp}/p --n 0", "n must be a positive integer number of studies, got 0"),
    ("make-phantoms --layout autopet --out {tmp}/p --shape 2 2 2", "shape must be three integers"),
    ("make-phantoms --layout autopet --out {file}", "--out {file} is a file; expected a folder"),
    ("predict --model {noconfig} --study {empty} --out {tmp}/s.nii.gz", "has no config.json"),
    ("predict --model {noconfig} --out {tmp}/s.nii.gz", "give exactly one of --input, --study, --input-dir (got none)"),
    ("predict --model {noconfig} --study {empty} --out {tmp}/s.txt", "expected a .nii.gz or .nii file name"),
    ("predict --model {noconfig} --input-dir {empty} --out {tmp}/s.nii.gz", "--out-dir is required"),
    (
        "evaluate --pred {tmp}/missing --gt {gt} --task autopet --out {tmp}/m.csv",
        "--pred {tmp}/missing is not a folder",
    ),
    ("evaluate --pred {empty} --gt {empty} --task autopet --out {tmp}/m.csv", "holds no ground truth"),
    ("evaluate --pred {empty} --gt {empty} --task autopet --out {empty}", "is a folder; expected a file path"),
    ("push --model {empty} --repo-id not-a-repo-id", "--repo-id 'not-a-repo-id' is not a Hub repo id"),
    ("push --model {file} --repo-id org/name", "is not a folder"),
    ("push --model {empty} --repo-id org/name --timeout -1", "lacks config.json"),
]


def fill(text: str, places: dict[str, Path]) -> str:
    for key, path in places.items():
        text = text.replace("{" + key + "}", str(path))
    return text


def split(command: str, places: dict[str, Path]) -> list[str]:
    """Split on spaces, keeping each filled-in path (which may contain spaces) whole."""
    words = []
    for word in command.split(" "):
        words.append(fill(word, places))
    return words


@pytest.mark.parametrize("command, message", MISTAKES, ids=[m[0].split(" --")[0] + ": " + m[1][:40] for m in MISTAKES])
def test_user_mistake_is_one_line_with_exit_code_2(places, capsys, command, message):
    argv = split(command, places)
    tried("entry points (user mistakes)")
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"mirror-unet {argv[0]}: error: ") and fill(message, places) in lines[0], lines[0]


@pytest.mark.parametrize(
    "command, message", MISTAKES[:4] + MISTAKES[7:8], ids=["make-phantoms", "shape", "out", "predict", "evaluate"]
)
def test_debug_raises_the_user_error_with_its_traceback(places, command, message):
    with pytest.raises(UserInputError):
        main(["--debug", *split(command, places)])


def test_internal_error_keeps_its_traceback(places, monkeypatch):
    from mirror_unet_hf.commands import evaluate

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(evaluate, "evaluate_folders", bug)
    with pytest.raises(ZeroDivisionError):
        main(
            [
                "evaluate",
                "--pred",
                str(places["empty"]),
                "--gt",
                str(places["empty"]),
                "--task",
                "autopet",
                "--out",
                str(places["tmp"] / "m.csv"),
            ]
        )


def run(command: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": os.environ.get("HF_HOME", "/tmp/hf-home-tests"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)


def test_real_processes_exit_2_with_one_line_and_debug_shows_the_traceback(places):
    """The console entry point and train.py as separate processes: exit status, stderr, --debug."""
    cli = [sys.executable, "-m", "mirror_unet_hf.cli"]
    mistake = [
        "evaluate",
        "--pred",
        str(places["tmp"] / "missing"),
        "--gt",
        str(places["gt"]),
        "--task",
        "autopet",
        "--out",
        str(places["tmp"] / "m.csv"),
    ]
    train = [
        sys.executable,
        str(ROOT / "train" / "train.py"),
        "--fold",
        "7",
        "--output_dir",
        str(places["tmp"] / "run"),
    ]
    tried("entry points (user mistakes)", 2)
    result = run(cli + mistake)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "is not a folder" in result.stderr, result.stderr
    # train.py without --debug: tests/test_train.py::test_bad_input_is_one_line_exit_2_and_output_untouched;
    # mirror-unet --debug: test_debug_raises_the_user_error_with_its_traceback (an uncaught exception exits 1)
    result = run([*train, "--debug"])
    assert result.returncode == 1 and "Traceback (most recent call last)" in result.stderr, result.stderr
    assert "--fold 7 is out of range" in result.stderr.strip().splitlines()[-1]
    assert not (places["tmp"] / "m.csv").exists() and not (places["tmp"] / "run").exists()
