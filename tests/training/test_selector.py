"""The selector's stream: a round's sequences, across epochs of its selection, resumed at the consumed position
(items read ahead but not consumed are read again), and an iterator of an older round stopping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from corpus_agents.errors import CorpusAgentsError
from corpus_agents.training.reader import SelectionReader
from corpus_agents.training.selector import SelectionStream
from training.test_reader import SEQ_LEN, Corpus, corpus  # noqa: F401 (the module's fixture)

SEED = 7


def make_stream(corpus: Corpus, items: int) -> SelectionStream:  # noqa: F811
    stream = SelectionStream(
        corpus.tokenizer, seq_len=SEQ_LEN, eos_id=corpus.eos, seed=SEED, items_per_round=items
    )
    stream.start_round(0, corpus.snapshot)
    return stream


def test_a_stream_resumes_at_the_consumed_position_across_epochs(corpus: Corpus) -> None:  # noqa: F811
    epoch = len(
        list(SelectionReader(corpus.snapshot, corpus.tokenizer, SEQ_LEN, corpus.eos, seed=SEED * 1_000_003))
    )
    n = epoch + epoch // 2  # the round reads its selection one and a half times
    whole = make_stream(corpus, n)
    expected = [item["input_ids"] for item in whole]
    assert len(expected) == n
    assert not torch.equal(expected[0], expected[epoch])  # the second epoch is shuffled anew
    whole.consumed(n)
    all_ids = whole.take_consumed()

    stream = make_stream(corpus, n)
    k = epoch + 3  # consumed: past the first epoch; read: 4 more (a DataLoader's prefetch)
    it = iter(stream)
    first = [next(it)["input_ids"] for _ in range(k + 4)]
    stream.consumed(k)
    state = stream.state_dict()
    assert state["epoch"] == 1 and state["items"] == k
    again = [item["input_ids"] for item in stream]  # a new iterator re-reads what was not consumed
    resumed = make_stream(corpus, n)
    resumed.load_state_dict(state)
    rest = [item["input_ids"] for item in resumed]
    for got in (first[:k] + again, first[:k] + rest):
        assert len(got) == n and all(torch.equal(a, b) for a, b in zip(got, expected))
    resumed.consumed(n - k)
    assert np.array_equal(resumed.take_consumed(), all_ids)  # the ids consumed before the checkpoint kept
    with pytest.raises(CorpusAgentsError, match="more sequences reported consumed"):
        resumed.consumed(1)


def test_a_new_round_stops_the_old_rounds_iterator(corpus: Corpus) -> None:  # noqa: F811
    stream = make_stream(corpus, 10)
    it = iter(stream)
    next(it)
    stream.start_round(1, corpus.snapshot)
    assert list(it) == []
    assert len(list(stream)) == 10 and stream.round == 1
