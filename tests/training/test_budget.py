"""Selection budgets count real tokens of the run's tokenizer (each document's tokens plus its EOS), not the
catalog's bytes-per-token estimate."""

from __future__ import annotations

from pathlib import Path

import torch
from helpers import TINY

import corpus_agents
from corpus_agents.config import load_config
from corpus_agents.scoring.catalog import Catalog
from corpus_agents.scoring.corpus import sample_texts
from corpus_agents.training.models import build_model, train_tokenizer
from corpus_agents.training.reader import SelectionReader, snapshot_tokens
from corpus_agents.training.selector import Selector


def test_selection_budgets_are_real_tokens_of_the_runs_tokenizer(
    workspace: tuple[Path, Path], tmp_path: Path
) -> None:
    ws, pipeline = workspace
    config = load_config(pipeline, [*TINY, "rounds.every=40", "rounds.oversample=1"])
    with Catalog(ws) as cat:
        # A small vocabulary: about a token per two bytes, far from the catalog's estimate of four.
        tokenizer = train_tokenizer(sample_texts(cat, 300, seed=0), 300, tmp_path / "tok")
        model = build_model("tiny", len(tokenizer), config.model.seq_len, 0, **config.model.overrides)
        selector = Selector(cat, config, "run", tokenizer, batch_size=2, grad_accum=1)
        budget = 40 * 2 * config.model.seq_len
        selector.start(model)
        selector.advance(model, torch.optim.SGD(model.parameters(), lr=0.0), 40)
        estimated = dict(cat.execute("SELECT round, tokens FROM selections WHERE run_id = 'run' ORDER BY 1"))
    for round_ in (0, 1):  # round 0 measured on a first selection, round 1 on round 0's
        path = selector.paths.selection(round_)
        real = SelectionReader(
            path, tokenizer, config.model.seq_len, tokenizer.eos_token_id
        ).document_tokens()
        assert abs(real - budget) < 0.15 * budget, (round_, real, budget)
        assert estimated[round_] < 0.7 * budget  # the estimate alone would have selected far too much
    # Counted through the run's token cache, which the stream then reads: every document is in it.
    assert list((ws / "cache" / "tokens").rglob("rg-*.npz"))

    # A static selection counts the tokens of the tokenizer it is given, else the estimate.
    with corpus_agents.open(ws, read_only=False) as w:
        counted = w.static_selection("static", budget, tokenizer=str(tmp_path / "tok"))
        estimated = w.static_selection("estimated", budget)
    assert abs(snapshot_tokens(counted, tokenizer) - budget) < 0.15 * budget
    assert snapshot_tokens(estimated, tokenizer) > 1.5 * budget
