"""Ray executor: runs the local executor's tasks on a Ray cluster with Ray Data actor pools.

The tasks are a Ray Data dataset of pickled task descriptors, run by `map_batches` with a callable class (an
actor pool). Each task splits itself into device pools (`split_by_device`): the "cpu" sub-tasks run in one
pool of fractional-CPU actors, so a small machine keeps CPUs free for Ray Data itself, and, when the cluster
has GPUs, each "gpu:..." pool gets actors of its own with one GPU each. Actors run the same work function as
the local executor (for scoring, `score_shard`: the two executors write identical parts and are
interchangeable) and return its results to the caller. An actor that dies is restarted and Ray retries its
task, so the work function must be safe to run twice (`score_shard` reuses a part a dead run renamed).
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from corpus_agents.errors import ExecutorError, one_line
from corpus_agents.scoring.executors import DeviceTask, Progress, Work

#: CPUs one CPU-pool actor reserves: fractional, so that N actors on N cores leave room for Ray Data's
#: own tasks and a 2-core machine does not wait forever for a free CPU.
CPU_ACTOR_CPUS = 0.5
#: Ray retries a task whose actor died this many times (the actor is restarted) before failing its parts;
#: bounded so a shard that crashes its worker every time fails (and is retried by the next run) instead of
#: looping forever.
MAX_TASK_RETRIES = 3
INSTALL_HINT = "the ray executor needs Ray: pip install 'corpus-agents[distributed]'"


def check_ray() -> None:
    """A one-line install hint if Ray Data is missing (checked before any work starts)."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        raise ExecutorError(INSTALL_HINT) from None


class TaskRunner:
    """Ray Data callable class: one instance per actor, which keeps what the work loads (an agent's model)
    for every task it runs."""

    def __init__(self, work: Work):
        self.work = work

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [pickle.dumps(self._run(pickle.loads(t))) for t in batch["task"]]
        return {"key": batch["key"], "results": np.array(results, dtype=object)}

    def _run(self, task: DeviceTask) -> list[Any]:
        """The task's results; as in the local executor, a task whose work raises fails alone."""
        try:
            return self.work(task, None)
        except Exception as exc:  # noqa: BLE001 - reported as this task's failure, the others run on
            return task.failed(one_line(exc, with_type=True))


def _init_ray(address: str | None) -> bool:
    """Connect to the cluster at `address` (auto|HOST:PORT) or start a local instance sized to this machine;
    return whether this call started Ray (and so must shut it down)."""
    import ray

    host, _, port = (address or "").rpartition(":")
    if host and port.isdigit() and "://" not in address:  # ray.init retries an unreachable head for minutes
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError as exc:
            raise ExecutorError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "include_dashboard": False}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, object_store_memory=256 << 20, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ExecutorError(f"cannot start {where}: {one_line(exc, with_type=True)}") from None
    return True


def _quiet_ray_data() -> None:
    """No progress bars, plan printouts or per-dataset stats from Ray Data: the CLI has its own bar."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    ctx.verbose_stats_logs = False
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="ray")


def run_ray(
    tasks: Sequence[DeviceTask],
    work: Work,
    on_progress: Progress,
    *,
    address: str | None = None,
    workers: int | None = None,
) -> Iterator[list[Any]]:
    """Yield each (task, pool) sub-task's results, `work(sub_task, None)`, as it finishes, like `run_local`.

    `address`: an existing cluster (auto|HOST:PORT), else a local instance. `workers`: CPU actors (default:
    the cluster's CPUs). GPU pools have one actor per GPU. A sub-task whose actor died more than
    MAX_TASK_RETRIES times fails its parts (the next run retries them); the others finish.
    """
    check_ray()
    if not tasks:
        return
    import ray
    import ray.data

    started_ray = _init_ray(address)
    try:
        _quiet_ray_data()
        resources = ray.cluster_resources()
        cpus, gpus = int(resources.get("CPU", 1)), int(resources.get("GPU", 0))
        subtasks: dict[int, tuple[int, DeviceTask]] = {}
        pools: dict[str, list[int]] = {}
        for index, task in enumerate(tasks):
            for pool, sub in task.split_by_device(gpus > 0):
                key = len(subtasks)
                subtasks[key] = (index, sub)
                pools.setdefault(pool, []).append(key)
        pending_per_task = {i: 0 for i in range(len(tasks))}
        for index, _ in subtasks.values():
            pending_per_task[index] += 1

        datasets = []
        for pool, keys in pools.items():
            items = [{"key": k, "task": pickle.dumps(subtasks[k][1])} for k in keys]
            gpu_pool = pool.startswith("gpu:")
            size = min(len(keys), gpus if gpu_pool else max(1, workers or cpus))
            # max_task_retries has no named parameter in Ray Data yet; the deprecated remote-args route is the
            # only way to bound retries (the default retries forever).
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
                ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                    TaskRunner,
                    fn_constructor_args=(work,),
                    batch_size=1,
                    batch_format="numpy",
                    # CPU actors: one model thread each, as the local executor's workers.
                    runtime_env=None if gpu_pool else {"env_vars": {"OMP_NUM_THREADS": "1"}},
                    concurrency=size,
                    num_cpus=CPU_ACTOR_CPUS,
                    num_gpus=1 if gpu_pool else None,
                    max_task_retries=MAX_TASK_RETRIES,
                )
            datasets.append(ds)
        dataset = datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
        # A sub-task that exhausted its retries must not abort the others: Ray Data logs and skips it, and
        # it is reported failed below.
        dataset.context.max_errored_blocks = len(subtasks)

        done: set[int] = set()
        error = "Ray worker died while scoring this shard (killed, out of memory or crashed)"
        try:
            for row in dataset.iter_rows():
                key = int(row["key"])
                done.add(key)
                yield from _finished(
                    key, pickle.loads(row["results"]), subtasks, pending_per_task, on_progress
                )
        except Exception as exc:  # noqa: BLE001 - e.g. the cluster went away: fail what did not finish
            error = f"Ray executor: {one_line(exc, with_type=True)}"
        for key in sorted(set(subtasks) - done):
            failed = subtasks[key][1].failed(error)
            yield from _finished(key, failed, subtasks, pending_per_task, on_progress)
    finally:
        if started_ray:
            ray.shutdown()


def _finished(
    key: int,
    results: list[Any],
    subtasks: dict[int, tuple[int, DeviceTask]],
    pending_per_task: dict[int, int],
    on_progress: Progress,
) -> Iterator[list[Any]]:
    """Yield a sub-task's results; advance the progress by the task's size once all its pools are done
    (progress counts documents, not documents x pools)."""
    index, sub = subtasks[key]
    pending_per_task[index] -= 1
    if pending_per_task[index] == 0:
        on_progress(sub.num_docs)
    yield results
