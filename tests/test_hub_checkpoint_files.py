"""The checkpoint folder's own JSON files: `write_metrics` / `read_metrics` and `write_training_args` /
`read_training_args` round trips, the training script's file format, and one-line errors naming the file."""

from __future__ import annotations

import json
import math
import re

import pytest
from conftest_hub import autopet_metrics

from mirror_unet_hf.errors import UserInputError
from mirror_unet_hf.hub import (
    METRICS_FILE,
    TRAINING_ARGS_FILE,
    read_metrics,
    read_training_args,
    trained_on_phantoms,
    write_metrics,
    write_training_args,
)

RUN_ARGS = {
    "preset": "autopet-v3",
    "dataset": "autopet",
    "max_steps": 20,
    "learning_rate": 0.001,
    "patch_size": [32, 32, 32],
    "phantoms": True,
    "hub_token": "hf_secret",
    "data_dir": None,
}


def test_metrics_round_trip_keeps_every_key(tmp_path):
    payload = {**autopet_metrics(), "split": "validation (fold 0 of 5)", "step": 40}
    path = write_metrics(tmp_path, payload)
    assert path == tmp_path / METRICS_FILE
    assert read_metrics(path) == payload


def test_training_args_round_trip_drops_credentials_only_when_read(tmp_path):
    path = write_training_args(tmp_path, RUN_ARGS)
    assert path == tmp_path / TRAINING_ARGS_FILE
    assert json.loads(path.read_text())["hub_token"] == "hf_secret"  # the local file is the run's own record
    read = read_training_args(path)
    assert read == {k: v for k, v in RUN_ARGS.items() if k != "hub_token"}
    assert trained_on_phantoms(read)


def test_files_are_indented_strict_json_with_a_final_newline(tmp_path):
    # the format train.py has always written (files.atomic_write_json)
    write_metrics(tmp_path, autopet_metrics())
    write_training_args(tmp_path, RUN_ARGS)
    assert (tmp_path / METRICS_FILE).read_text() == json.dumps(autopet_metrics(), indent=2) + "\n"
    assert (tmp_path / TRAINING_ARGS_FILE).read_text() == json.dumps(RUN_ARGS, indent=2) + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [METRICS_FILE, TRAINING_ARGS_FILE]  # no temporaries left


@pytest.mark.parametrize("writer", [write_metrics, write_training_args])
def test_a_payload_that_is_not_plain_json_is_refused_naming_the_file(tmp_path, writer):
    with pytest.raises(UserInputError, match="cannot write .*not plain JSON") as info:
        writer(tmp_path, {"value": math.nan})
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "reader, text, message",
    [
        (read_metrics, '{"task": "autopet",', "is not valid JSON"),
        (read_metrics, "[1, 2]", "holds a list"),
        (
            read_metrics,
            json.dumps({**autopet_metrics(), "metrics": {"dice": None, "fpv_ml": "high"}}),
            "metric 'fpv_ml' is 'high'",
        ),
        (read_metrics, b"\xff\xfe{}", "is not valid JSON"),
        (read_training_args, "{'preset': 'autopet-v3'}", "is not valid JSON"),
        (read_training_args, '"phantoms"', "holds a str; expected a flat dict"),
    ],
)
def test_a_malformed_file_is_a_one_line_error_naming_it(tmp_path, reader, text, message):
    path = tmp_path / "run.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(UserInputError, match=re.escape(message)) as info:
        reader(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


@pytest.mark.parametrize("reader", [read_metrics, read_training_args])
def test_a_missing_file_is_a_user_error(tmp_path, reader):
    with pytest.raises(UserInputError, match=re.escape(f"{tmp_path / 'absent.json'} does not exist")):
        reader(tmp_path / "absent.json")


@pytest.mark.parametrize(
    "args, expected",
    [
        (None, False),
        ({}, False),
        ({"phantoms": True}, True),
        ({"phantoms": "yes"}, False),
        ({"dataset": "my-Phantoms"}, True),
        ({"dataset": "autopet", "phantoms": False}, False),
    ],
)
def test_trained_on_phantoms(args, expected):
    assert trained_on_phantoms(args) is expected
