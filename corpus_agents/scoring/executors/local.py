"""Local executor: runs tasks in a process pool (workers forked by a fork server), or in this process with one
worker."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from typing import Any

from corpus_agents.errors import one_line
from corpus_agents.scoring.executors import Progress, Task, Work

#: Modules a pool worker needs, imported once by the fork server that forks the workers (not per worker).
WORKER_MODULES = [
    "corpus_agents.scoring.parts",
    "corpus_agents.scoring.executors.local",
    "corpus_agents.scoring.agents.fasttext",
    "corpus_agents.scoring.agents.metadata",
]

_channel: Connection | None = None


def pool_context() -> mp.context.BaseContext:
    """Where pool workers come from: a fork server, started once per process with the scoring modules
    imported, forks each worker, so a worker costs a fork rather than a fresh interpreter and its imports;
    workers are never forks of this process (which holds DuckDB and threads). Each worker takes this process's
    environment as it is when the pool starts (`_init_worker`). Where there are no fork servers: spawn."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(WORKER_MODULES)  # read when the server starts
    return ctx


def start_pool_server() -> None:
    """Start this process's fork server now if it is not running: it imports the scoring modules in its own
    process while the caller goes on (opening the catalog, planning), so the pool created next forks its
    workers at once instead of waiting for those imports. Nothing to start where there are no fork servers."""
    if "forkserver" in mp.get_all_start_methods():
        from multiprocessing import forkserver

        pool_context()  # sets the modules it preloads
        forkserver.ensure_running()


def stop_pool_server() -> None:
    """Stop this process's fork server, if running, and wait for it (the next pool starts a new one). Its
    CPU time, and its workers', then counts in this process's `RUSAGE_CHILDREN`."""
    from multiprocessing import forkserver

    forkserver._forkserver._stop()


def _init_worker(channel: Connection, environ: dict[str, str]) -> None:
    """Pool initializer: the owner's environment as it is now (the fork server kept the one of its start:
    credentials or endpoints set since then must reach the workers), one model-thread per worker so N
    workers use N cores, and the channel to the owner."""
    global _channel
    _channel = channel
    os.environ.clear()
    os.environ.update(environ)
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


def _send(message: tuple[str, int]) -> None:
    """One message to the pool's owner. Messages are a few bytes, written in one write(2) to a pipe: atomic
    below PIPE_BUF, so workers share the pipe without a lock and one killed mid-send cannot block others."""
    if _channel is not None:
        _channel.send(message)


def _run_task(work: Work, task: Task, key: int) -> list[Any]:
    """Worker entry point; announces the task first, so that if this worker dies, the owner knows which
    task it was running (and does not blame the tasks queued behind it)."""
    _send(("started", key))  # written at once: the message outlives a crash right after
    return work(task, lambda n: _send(("docs", n)))


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
    ctx = pool_context()
    # A new pipe per pool; the owner keeps a sending end to tell the reader thread to stop.
    receiver, sender = ctx.Pipe(duplex=False)
    started: set[int] = set()

    def drain() -> None:  # read as messages come: a full pipe would block the workers
        while True:
            kind, value = receiver.recv()
            if kind == "stop":
                return
            if kind == "started":
                started.add(value)
            else:
                on_progress(value)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    interrupted: list[tuple[int, Task]] = []
    try:
        with ProcessPoolExecutor(
            min(workers, len(todo)),
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(sender, dict(os.environ)),
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
        # Every worker has exited: all they sent is in the pipe, ahead of this.
        sender.send(("stop", 0))
        reader.join()
        receiver.close()
        sender.close()
    return [(key, task, key in started) for key, task in interrupted]
