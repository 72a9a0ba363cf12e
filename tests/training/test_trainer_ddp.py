"""The training loop under torchrun: two CPU processes (gloo), rank 0 owning the catalog and the console."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY, console_tables, final_weights

from corpus_agents.config import load_config
from corpus_agents.scoring.catalog import Catalog
from corpus_agents.training.models import load_tokenizer
from corpus_agents.training.reader import SelectionReader
from corpus_agents.training.rewards import encode_documents


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # in .ci/run's slow line; keeps the default run under 5 minutes
def test_two_ranks_share_probes_and_selection_and_rank_0_records_the_rounds(
    workspace: tuple[Path, Path],
) -> None:
    ws, config = workspace
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
            "-m", "--", "corpus_agents.cli", "train", str(ws), "--pipeline", str(config), "--run", "ddp"]  # fmt: skip
    for item in TINY:
        args += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert out.count("run ddp: 9 steps") == 1, out  # only rank 0 reports

    tables = console_tables(ws, "ddp")
    assert {r for r, _, _ in tables["theta"]} == {0, 1, 2}
    assert {r for r, _, _ in tables["probes"]} == {1, 2} and all(r is not None for *_, r in tables["probes"])
    assert len(tables["selections"]) == 3 and all(n > 0 for _, n, _ in tables["selections"])
    # Each rank read its own slice of the round-0 selection from its start: both slices reach the seen counts.
    run = ws / "runs" / "ddp"
    cfg = load_config(str(config), TINY)
    tokenizer = load_tokenizer(str(run / "tokenizer"))
    seen = {doc for doc, _ in tables["seen"]}
    for rank in (0, 1):
        reader = SelectionReader(
            run / "selections" / "round-00000.parquet", tokenizer, seq_len=cfg.model.seq_len,
            eos_id=tokenizer.eos_token_id, seed=cfg.train.seed * 1_000_003, rank=rank, world_size=2,
        )  # fmt: skip
        assert int(reader.doc_order()[0]) in seen, rank

    events = [json.loads(line)["event"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert events.count("final") == 1 and events.count("round") == 3  # logged by rank 0 alone
    state = torch.load(run / "checkpoints" / "step-00000009" / "trainer_state.pt", weights_only=True)
    selector = state["selector"]
    assert (state["step"], selector["round"]) == (9, 2)
    # Each rank's stream position is kept: the two slices of round 2's selection, read 3 steps x 2 sequences.
    assert [(s["reader"]["rank"], s["items"]) for s in selector["streams"]] == [(0, 6), (1, 6)]
    # Rank 0 counted both ranks' work: the probe tokens are those of every probe document, the training
    # tokens those of both ranks' batches.
    with Catalog(ws) as cat:
        texts = [
            t
            for (t,) in cat.execute(
                "SELECT text FROM probes JOIN documents USING (doc_id) WHERE run_id = 'ddp'"
            )
        ]
    probe_tokens = sum(map(len, encode_documents(tokenizer, texts, max_length=cfg.rewards.max_tokens)))
    assert selector["compute"]["probe_tokens"] == probe_tokens > 0
    assert selector["compute"]["train_tokens"] == 9 * cfg.train.batch_size * cfg.model.seq_len * 2
    assert all(torch.isfinite(t).all() for t in final_weights(ws, "ddp").values())
