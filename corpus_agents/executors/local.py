"""Local executor: runs shard tasks in a process pool (or in-process with one worker) with a progress bar."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from corpus_agents.scoring import PartResult, ShardTask, one_line, score_shard

_progress_queue: mp.Queue[int] | None = None


def _init_worker(progress_queue: mp.Queue[int]) -> None:
    """Pool initializer: one model-thread per worker so N workers use N cores, and the progress queue."""
    global _progress_queue
    _progress_queue = progress_queue
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def _run_task(task: ShardTask) -> list[PartResult]:
    return score_shard(task, _progress_queue.put if _progress_queue is not None else None)


def run_local(
    tasks: list[ShardTask], workers: int, on_progress: Callable[[int], None]
) -> Iterator[list[PartResult]]:
    """Yield each task's results as it finishes. A dead worker fails its in-flight tasks, not the run."""
    if workers <= 1:
        for task in tasks:
            yield score_shard(task, on_progress)
        return
    ctx = mp.get_context("spawn")
    progress_queue = ctx.Queue()
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            try:
                on_progress(progress_queue.get(timeout=0.2))
            except queue.Empty:
                continue

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        with ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init_worker, initargs=(progress_queue,)
        ) as pool:
            futures = {pool.submit(_run_task, t): t for t in tasks}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    task = futures[fut]
                    try:
                        yield fut.result()
                    except BrokenProcessPool as exc:
                        yield _failed(task, f"worker process died: {one_line(exc)}")
                    except Exception as exc:  # noqa: BLE001 - e.g. unpicklable result: report, continue
                        yield _failed(task, one_line(exc))
    finally:
        stop.set()
        reader.join()


def _failed(task: ShardTask, error: str) -> list[PartResult]:
    return [
        PartResult(
            s.agent.name,
            task.shard.shard_id,
            s.fingerprint,
            None,
            0,
            task.complete,
            0.0,
            f"shard {task.shard.uri}: {error}",
        )
        for s in task.parts
    ]
