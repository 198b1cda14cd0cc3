"""Resumable checkpoints of a training run: `<output_dir>/checkpoints/step_N/`.

A checkpoint is Accelerate's `save_state` (weights, optimizer, random states) plus `trainer_state.json`
(where the run is: step, epoch, position in the epoch, best score, validation history, and the LR
scheduler's state). It is written into a hidden temporary folder and renamed, so a `step_N` folder exists
only once complete and a killed run never resumes from half a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserInputError
from ..files import atomic_write_json, replace_folder

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")
# What a new run in a used output_dir (--overwrite_output_dir) removes of the previous run.
RUN_OUTPUTS = ("checkpoints", "best", "final", "trainer_state.json")


@dataclass
class TrainerState:
    """Where a run is; `epoch` and `batches_in_epoch` locate the data stream exactly, so a resumed run sees
    the batches an uninterrupted run would have seen."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best_score: float | None = None
    best_step: int | None = None
    history: list[dict] = field(default_factory=list)  # {"step": N, **validation metrics} per evaluation
    # what the order of an epoch's batches depends on besides the seed: workers, batch size, processes
    loader_layout: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON form of `trainer_state.json` (field order kept)."""
        return dataclasses.asdict(self)

    def last_metrics(self) -> dict | None:
        """The latest validation metrics, or None before the first evaluation."""
        if not self.history:
            return None
        return {k: v for k, v in self.history[-1].items() if k != "step"}


def _delete_folder(path: Path, doomed: Path) -> None:
    """Rename first, then delete: a kill mid-delete leaves a hidden folder, never a half-deleted `path`."""
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed)


class Checkpointer:
    """Lists, resolves, writes, rotates and loads the checkpoints of one output folder.

    Listing and resolving need no Accelerator (they run before it is made, so a bad flag fails fast);
    `save` and `load` take the run's Accelerator and are called on every process.
    """

    def __init__(self, output_dir: str | os.PathLike, total_limit: int | None = None):
        self.output_dir = Path(output_dir)
        self.folder = self.output_dir / "checkpoints"
        self.total_limit = total_limit

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (a checkpoint folder appears only once fully written)."""
        if not self.folder.is_dir():
            return []
        found = [
            (int(m.group(1)), p)
            for p in self.folder.iterdir()
            if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))
        ]
        return [p for _, p in sorted(found)]

    def resolve(self, resume_from_checkpoint: str | None) -> Path | None:
        """The checkpoint `--resume_from_checkpoint` names: a folder, or 'latest' (None if nothing is saved
        yet, so the run starts from scratch)."""
        if not resume_from_checkpoint:
            return None
        if resume_from_checkpoint == "latest":
            checkpoints = self.checkpoints()
            return checkpoints[-1] if checkpoints else None
        path = Path(resume_from_checkpoint)
        if not (path / "trainer_state.json").is_file():
            raise UserInputError(
                f"--resume_from_checkpoint {path} is not a checkpoint (no trainer_state.json); "
                "expected <output_dir>/checkpoints/step_N"
            )
        return path

    def check_output_dir(self, overwrite: bool, resuming: bool) -> None:
        """Refuse a new run in a non-empty output folder unless it resumes or `--overwrite_output_dir` is given."""
        output = self.output_dir
        if not output.parent.exists():
            raise UserInputError(f"--output_dir {output}: folder {output.parent} does not exist")
        if output.exists() and any(output.iterdir()) and not resuming and not overwrite:
            raise UserInputError(
                f"--output_dir {output} is not empty; pass --resume_from_checkpoint latest to continue that run or "
                "--overwrite_output_dir to start a new one there"
            )

    def clear_previous_run(self) -> None:
        """A new run in a used output_dir (--overwrite_output_dir): remove what the previous run wrote, so its
        checkpoints are neither overwritten in place nor resumed by a later `--resume_from_checkpoint latest`."""
        for name in RUN_OUTPUTS:
            path = self.output_dir / name
            if path.is_dir():
                _delete_folder(path, self.output_dir / f".{name}.previous-run")
            elif path.exists():
                path.unlink()

    def save(self, accelerator, state: TrainerState, scheduler) -> None:
        """`save_state` into `checkpoints/.step_N.tmp`, add `trainer_state.json`, rename to `step_N`, then drop
        the oldest checkpoints beyond `total_limit`. Called on every process."""
        staging = self.folder / f".step_{state.step}.tmp"
        if accelerator.is_main_process:
            self.folder.mkdir(exist_ok=True)
            if staging.exists():
                shutil.rmtree(staging)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        if accelerator.is_main_process:
            # The scheduler's state goes into the JSON: Accelerate would pickle a registered object and unpickle
            # it with the full unpickler on resume, which runs any code a checkpoint file carries.
            atomic_write_json(staging / "trainer_state.json", {**state.to_dict(), "scheduler": scheduler.state_dict()})
            replace_folder(staging, self.folder / f"step_{state.step}")  # a resume from an older checkpoint re-saves
            self.rotate()
        accelerator.wait_for_everyone()

    def rotate(self) -> None:
        """Delete the oldest checkpoints so that at most `total_limit` remain (all of them when it is None)."""
        checkpoints = self.checkpoints()
        for old in checkpoints[: max(0, len(checkpoints) - (self.total_limit or len(checkpoints)))]:
            _delete_folder(old, old.with_name(f".{old.name}.deleting"))

    def load(self, accelerator, checkpoint: Path, scheduler) -> TrainerState:
        """Restore the prepared objects (`load_state`) and the scheduler; return the run's trainer state."""
        accelerator.load_state(str(checkpoint))
        values = json.loads((checkpoint / "trainer_state.json").read_text())
        if "scheduler" not in values:
            raise UserInputError(
                f"--resume_from_checkpoint {checkpoint}: written by an older train.py "
                "(scheduler state in a pickle); start a new run"
            )
        scheduler.load_state_dict(values.pop("scheduler"))
        return TrainerState(**values)
