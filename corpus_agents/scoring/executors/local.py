"""Local executor: runs tasks in a process pool of spawned workers, or in this process with one worker."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import sys
import threading
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from corpus_agents.errors import one_line
from corpus_agents.scoring.executors import Progress, Task, Work

_progress_queue: mp.Queue[int] | None = None
_started_queue: Any = None


def _init_worker(progress_queue: mp.Queue[int], started_queue: Any) -> None:
    """Pool initializer: one model-thread per worker so N workers use N cores, and the progress queues."""
    global _progress_queue, _started_queue
    _progress_queue, _started_queue = progress_queue, started_queue
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # read by torch/OpenMP when an agent first imports them
    if "torch" in sys.modules:  # importing torch here would cost seconds per worker for fastText-only runs
        sys.modules["torch"].set_num_threads(1)


def _exit_with_parent() -> None:
    """Exit when the pool's owner dies (kill -9): pool workers hold both ends of their queues' pipes, so
    without this they would wait forever, keeping their models (and GPU memory) and writing stray parts."""
    parent = mp.parent_process()
    if parent is not None:
        parent.join()
        os._exit(1)


def _run_task(work: Work, task: Task, key: int) -> list[Any]:
    """Worker entry point; announces the task first, so that if this worker dies, the owner knows which
    task it was running (and does not blame the tasks queued behind it)."""
    if _started_queue is not None:
        _started_queue.put(key)  # a SimpleQueue writes at once: the message outlives a crash right after
    return work(task, _progress_queue.put if _progress_queue is not None else None)


#: A task interrupted this many times by broken pools is failed, whatever it was doing (termination bound).
MAX_POOL_RESTARTS = 3


def run_local(
    tasks: Sequence[Task], work: Work, on_progress: Progress, workers: int = 1
) -> Iterator[list[Any]]:
    """Yield each task's results, `work(task, progress)`, as it finishes, in any order. A task whose work
    raises, or whose worker dies, yields `task.failed(reason)`: it fails alone, never the run.

    A worker that dies (killed, out of memory, crashed in native code) breaks its process pool, which fails
    every pending future. Tasks that had not started run again in a new pool; those that were running run
    again alone, each in a pool of its own, and fail only if that pool breaks too.
    """
    if workers <= 1:
        for task in tasks:
            try:
                results = work(task, on_progress)
            except Exception as exc:  # noqa: BLE001 - as in a pool: this task fails, the others run
                results = task.failed(one_line(exc, with_type=True))
            yield results
        return
    todo = list(enumerate(tasks))
    suspects: list[tuple[int, Task]] = []
    restarts = dict.fromkeys(range(len(tasks)), 0)
    while todo or suspects:
        alone = not todo
        batch, todo = (todo, []) if todo else ([suspects.pop(0)], [])
        interrupted = yield from _run_pool(batch, work, 1 if alone else workers, on_progress)
        for key, task, started in interrupted:
            restarts[key] += 1
            if (alone and started) or restarts[key] >= MAX_POOL_RESTARTS:
                yield task.failed(
                    "worker process died while scoring this shard (killed, out of memory or crashed)"
                )
            elif started:
                suspects.append((key, task))
            else:
                todo.append((key, task))


def _run_pool(
    todo: list[tuple[int, Task]], work: Work, workers: int, on_progress: Progress
) -> Generator[list[Any], None, list[tuple[int, Task, bool]]]:
    """Run (key, task) pairs in a new pool, yielding results; return the tasks a broken pool interrupted,
    each with whether it had started."""
    ctx = mp.get_context("spawn")
    # New queues per pool: a worker killed while writing to one may leave its lock held.
    progress_queue, started_queue = ctx.Queue(), ctx.SimpleQueue()
    started: set[int] = set()
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            while not started_queue.empty():  # read as they come: a full pipe would block the workers
                started.add(started_queue.get())
            try:
                on_progress(progress_queue.get(timeout=0.2))
            except queue.Empty:
                continue

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    interrupted: list[tuple[int, Task]] = []
    try:
        with ProcessPoolExecutor(
            min(workers, len(todo)),
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(progress_queue, started_queue),
        ) as pool:
            futures = {}
            for key, task in todo:
                try:
                    futures[pool.submit(_run_task, work, task, key)] = (key, task)
                except BrokenProcessPool:
                    interrupted.append((key, task))
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    key, task = futures[fut]
                    try:
                        yield fut.result()
                    except BrokenProcessPool:
                        interrupted.append((key, task))
                    except Exception as exc:  # noqa: BLE001 - the work raised, or its result is unpicklable
                        yield task.failed(one_line(exc, with_type=True))
    finally:
        stop.set()
        reader.join()
    while not started_queue.empty():  # every worker has exited: nothing more is being written
        started.add(started_queue.get())
    while True:  # progress a worker sent just before its pool shut down
        try:
            on_progress(progress_queue.get_nowait())
        except queue.Empty:
            break
    return [(key, task, key in started) for key, task in interrupted]
