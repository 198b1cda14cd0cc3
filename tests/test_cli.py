"""The `mirror-unet` console script: presets listing and the one-line error style."""

import json
import subprocess
import sys

import pytest

from mirror_unet_hf import PRESETS
from mirror_unet_hf.cli import main


def test_presets_lists_every_preset_with_tasks_and_parameter_count(capsys):
    assert main(["presets"]) == 0
    text = capsys.readouterr().out
    for name in PRESETS:
        assert f"{name}  (" in text
    assert "autopet-v3  (8.09 M parameters; inputs: ct, pet)" in text
    assert "- branch `pet` [pet]: segmentation of lesion" in text
    assert "- classification head [bottleneck of `pet`]: lesion presence" in text


def test_presets_json_has_exact_parameter_counts(capsys):
    assert main(["presets", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["autopet-early-fusion"]["parameters"] == 4_809_781
    assert rows["brats-v1"]["final_mask"] == "union: flair, t1gd"


@pytest.mark.parametrize(
    "argv, start",
    [
        (["nonsense"], "mirror-unet: error: argument COMMAND: invalid choice: 'nonsense'"),
        (["predict", "--model", "m", "--bogus", "1"], "mirror-unet: error: unrecognized arguments: --bogus 1"),
        (["predict"], "mirror-unet predict: error: the following arguments are required: --model"),
        (["evaluate", "--pred", "a"], "mirror-unet evaluate: error:"),
    ],
)
def test_usage_mistakes_are_one_line_naming_the_flag_and_the_help(argv, start):
    result = subprocess.run([sys.executable, "-m", "mirror_unet_hf.cli", *argv], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()  # no usage block, no traceback
    assert line.startswith(start), line
    assert line.endswith("--help)"), line


def test_console_script_is_installed_and_unknown_command_exits_2():
    ok = subprocess.run([sys.executable, "-m", "mirror_unet_hf.cli", "presets"], capture_output=True, text=True)
    assert ok.returncode == 0 and "autopet-v1" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "mirror_unet_hf.cli", "nonsense"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'nonsense'" in bad.stderr
