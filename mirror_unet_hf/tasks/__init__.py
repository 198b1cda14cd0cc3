"""The task registry: one ``TaskSpec`` per dataset, in one module each.

``get_task("autopet")`` returns the task with everything that differs between datasets: on-disk layout,
case and patient ids, label map, metrics, model-card labels, preprocessing defaults and phantoms.
Adding a dataset = a new module here that subclasses ``TaskSpec`` and calls ``register_task``, an import
line below, and its tests (see CONTRIBUTING.md).
"""

from .base import StudyFiles, TaskSpec
from .registry import detect_task, detection_order, get_task, list_tasks, register_task, task_for_modalities, task_names

# Built-in tasks register themselves on import; the order is the order of `task_names()`.
from . import autopet, brain_tumour, autopet3  # noqa: F401  isort: skip

__all__ = [
    "StudyFiles",
    "TaskSpec",
    "detect_task",
    "detection_order",
    "get_task",
    "list_tasks",
    "register_task",
    "task_for_modalities",
    "task_names",
]
