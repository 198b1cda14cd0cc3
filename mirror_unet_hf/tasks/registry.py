"""The task registry: ``register_task`` adds a ``TaskSpec``; ``get_task`` finds one by name or alias."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from ..errors import UserInputError
from .base import TaskSpec

_TASKS: dict[str, TaskSpec] = {}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def register_task(task: TaskSpec) -> TaskSpec:
    """Add ``task`` under its name; a second task with the same name or alias is refused."""
    taken = {_key(alias): other.name for other in _TASKS.values() for alias in (other.name, *other.aliases)}
    for alias in (task.name, *task.aliases):
        if _key(alias) in taken and taken[_key(alias)] != task.name:
            raise ValueError(f"task {task.name!r}: name {alias!r} is already used by task {taken[_key(alias)]!r}")
    _TASKS[task.name] = task
    return task


def task_names() -> tuple[str, ...]:
    """Names of the registered tasks, in registration order."""
    return tuple(_TASKS)


def list_tasks() -> tuple[TaskSpec, ...]:
    """The registered tasks, in registration order."""
    return tuple(_TASKS.values())


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The task named ``name`` or one of its aliases (case, ``-``, ``_`` and spaces ignored: ``BrainTumour``)."""
    if isinstance(name, TaskSpec):
        return name
    key = _key(name)
    for task in _TASKS.values():
        if key in {_key(alias) for alias in (task.name, *task.aliases)}:
            return task
    raise UserInputError(f"unknown dataset {name!r}; expected one of: {', '.join(_TASKS)}")


def task_for_modalities(modalities: Iterable[str]) -> TaskSpec | None:
    """The first task whose studies have every one of ``modalities`` (a model's inputs), or None."""
    wanted = set(modalities)
    return next((task for task in _TASKS.values() if wanted <= set(task.modalities)), None)


def detection_order() -> tuple[TaskSpec, ...]:
    """The registered tasks in the order a folder's layout is guessed: ``detect_first`` tasks, then the rest,
    each in registration order."""
    return tuple(sorted(_TASKS.values(), key=lambda task: not task.detect_first))


def detect_task(data_dir: Path) -> tuple[TaskSpec, Path] | None:
    """The first task (in ``detection_order``) whose layout ``data_dir`` holds, with its dataset folder; None
    when none does."""
    for task in detection_order():
        root = task.find_root(Path(data_dir))
        if root is not None:
            return task, root
    return None
