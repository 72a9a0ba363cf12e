"""Executors run tasks with a work function and stream back each task's results; they know nothing about
agents, shards or the catalog, only what `Task` below offers.

Both take `(tasks, work, on_progress)`: `work(task, progress)` (picklable: a module-level function) runs
in a worker and returns the task's results, reporting done units through `progress` when given;
`on_progress(n)` runs in the caller. A task whose worker dies yields `task.failed(reason)` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

Progress = Callable[[int], None]


class Task(Protocol):
    """What an executor needs from a task."""

    @property
    def num_docs(self) -> int:
        """Units of work, as `progress` counts them."""
        ...

    def failed(self, reason: str) -> list[Any]:
        """The task's results when it could not run (its worker died, say)."""
        ...


class DeviceTask(Task, Protocol):
    """A task an executor with device pools can split: (pool, sub-task) pairs, a pool named "gpu:..." needing
    one GPU per worker."""

    def split_by_device(self, gpus: bool) -> list[tuple[str, DeviceTask]]: ...


Work = Callable[[Any, Progress | None], list[Any]]
