"""The streaming reader: coverage across ranks and workers, packing, seeded order, exact resume, odd documents."""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.utils.data import DataLoader

from corpus_agents.errors import CorpusError
from corpus_agents.training.reader import SelectionReader, collate, pack
from corpus_agents.training.selection import ShardRef, write_snapshot

SEQ_LEN = 64
ODD_TEXTS = [None, "", "\ufffd", "contains the literal <eos> marker"]  # + one invalid-UTF-8 row per shard


@dataclass
class Corpus:
    snapshot: Path
    tokenizer: Tokenizer
    eos: int
    texts: dict[int, str]  # doc_id -> text as the reader must see it (null -> "", bad bytes -> U+FFFD)
    selected: np.ndarray  # doc_ids of the snapshot

    def reader(self, **kwargs: Any) -> SelectionReader:
        args = {"seq_len": SEQ_LEN, "eos_id": self.eos, "seed": 7, "batch_docs": 16, **kwargs}
        return SelectionReader(self.snapshot, self.tokenizer, **args)

    def stream(self, doc_ids: np.ndarray) -> np.ndarray:
        """Each document's tokens followed by EOS, in the given order (special-token strings as plain text)."""
        self.tokenizer.encode_special_tokens = True
        enc = self.tokenizer.encode_batch([self.texts[int(d)] for d in doc_ids], add_special_tokens=False)
        return np.array([t for e in enc for t in (*e.ids, self.eos)], dtype=np.int64)


def stdlib_chunks(limit: int) -> list[str]:
    """Real text: the standard library's Python sources cut into ~500-character pieces at line breaks."""
    chunks: list[str] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        current = ""
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
            current += line
            if len(current) >= 500:
                chunks.append(current)
                current = ""
        if len(chunks) >= limit:
            return chunks[:limit]
    return chunks


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """3 shards of 160 rows (row groups of 25) with odd documents; a snapshot of about 60% of the rows."""
    root = tmp_path_factory.mktemp("reader")
    chunks = stdlib_chunks(600)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(chunks, trainer)
    rng = np.random.default_rng(0)
    texts: dict[int, str] = {}
    shards: dict[int, ShardRef] = {}
    rows: list[tuple[int, int, int, int]] = []
    for s in range(3):
        raw: list[bytes | None] = [c.encode() for c in chunks[s * 160 : (s + 1) * 160]]
        raw[5 : 5 + len(ODD_TEXTS)] = [None if t is None else t.encode() for t in ODD_TEXTS]
        raw[20] = b"caf\xe9 \xff\xfe not utf-8 " + raw[20]
        raw[41] = " ".join(chunks[:40]).encode()  # a long document: many sequences
        path = root / f"shard-{s}.parquet"
        array = pa.array(raw, pa.binary()).view(pa.string())  # invalid UTF-8 kept as is
        pq.write_table(pa.table({"text": array}), path, row_group_size=25)
        shards[s] = ShardRef(str(path), "text")
        keep = rng.random(len(raw)) < 0.6
        keep[5:25] = True  # the odd documents are selected
        keep[100:125] = False  # a row group with nothing selected
        for r in np.flatnonzero(keep).tolist():
            doc_id = s << 32 | r
            texts[doc_id] = "" if raw[r] is None else raw[r].decode("utf-8", errors="replace")
            rows.append((doc_id, s, r, r // 25))
    table = pa.table(
        {
            "doc_id": [r[0] for r in rows],
            "shard_id": [r[1] for r in rows],
            "row_idx": [r[2] for r in rows],
            "row_group": [r[3] for r in rows],
            "priority": rng.random(len(rows)),
        }
    )
    snapshot = write_snapshot(root / "snapshot.parquet", table, shards)
    return Corpus(snapshot, tokenizer, tokenizer.token_to_id("<eos>"), texts, np.array(sorted(texts)))


def reported(items: list[dict[str, torch.Tensor]]) -> np.ndarray:
    ids = torch.cat([item["doc_ids"].reshape(-1) for item in items]).numpy()
    return ids[ids >= 0]


def by_worker(batches: list[dict[str, torch.Tensor]]) -> dict[int, list[tuple[list[int], list[int]]]]:
    """Sequences (tokens, doc_ids) of each worker, in the order that worker produced them."""
    out: dict[int, list[tuple[list[int], list[int]]]] = {}
    for batch in batches:
        for tokens, ids, pos in zip(batch["input_ids"], batch["doc_ids"], batch["position"]):
            out.setdefault(int(pos[1]), []).append((tokens.tolist(), ids[ids >= 0].tolist()))
    return out


def loader(reader: SelectionReader, workers: int = 2) -> DataLoader:
    return DataLoader(reader, batch_size=4, num_workers=workers, collate_fn=collate)


def test_packing_matches_documents_in_reading_order(corpus: Corpus) -> None:
    reader = corpus.reader()
    items = list(reader)
    order = reader.doc_order()
    assert sorted(order.tolist()) == corpus.selected.tolist()
    assert all(
        item["input_ids"].shape == (SEQ_LEN,) and item["input_ids"].dtype == torch.long for item in items
    )
    ids = reported(items)
    assert ids.tolist() == order[: len(ids)].tolist()  # reported once each, in reading order
    got = torch.cat([item["input_ids"] for item in items]).numpy()
    expected = corpus.stream(order)
    assert np.array_equal(got, expected[: len(got)])
    assert 0 <= len(expected) - len(got) < SEQ_LEN  # only the final partial sequence is dropped
    # documents are separated by EOS only: a document that contains the text "<eos>" stays one document
    assert int((got == corpus.eos).sum()) == len(ids)
    # each sequence reports the documents whose EOS it holds, padded with -1 to a fixed width
    for item in items:
        assert item["doc_ids"].shape == (SEQ_LEN,)
        assert int((item["input_ids"] == corpus.eos).sum()) == int((item["doc_ids"] >= 0).sum())


def test_every_document_read_once_over_ranks_and_workers(corpus: Corpus) -> None:
    seen: list[int] = []
    for rank in range(2):
        for worker in range(3):
            seen += corpus.reader(rank=rank, world_size=2).doc_order(worker, 3).tolist()
    assert sorted(seen) == corpus.selected.tolist()  # the union is the selection, no document twice
    sizes = [len(corpus.reader(rank=r, world_size=2).doc_order()) for r in range(2)]
    assert abs(sizes[0] - sizes[1]) <= 1

    for rank in range(2):  # what each (rank, worker) yields through a DataLoader (default collate)
        reader = corpus.reader(rank=rank, world_size=2)
        streams = by_worker(list(DataLoader(reader, batch_size=4, num_workers=2)))
        for worker in range(2):
            order = reader.doc_order(worker, 2)
            ids = [d for _, ds in streams[worker] for d in ds]
            assert ids == order[: len(ids)].tolist()
            got = np.array([t for tokens, _ in streams[worker] for t in tokens])
            expected = corpus.stream(order)
            assert np.array_equal(got, expected[: len(got)]) and len(expected) - len(got) < SEQ_LEN


def test_seeded_order(corpus: Corpus) -> None:
    first = list(corpus.reader())
    again = list(corpus.reader())
    assert len(first) == len(again)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, again))
    base = corpus.reader().doc_order()
    assert not np.array_equal(base, corpus.reader(seed=8).doc_order())
    assert not np.array_equal(base, corpus.reader(epoch=1).doc_order())
    reader = corpus.reader()
    reader.set_epoch(1)
    assert np.array_equal(reader.doc_order(), corpus.reader(epoch=1).doc_order())
    # rows of one row group are spread over their window, not read in row order
    shard_row = base[:25] & 0xFFFFFFFF
    assert not np.all(np.diff(shard_row) > 0)


@pytest.mark.parametrize("cut", [1, 9, 57, -2])
def test_resume_in_process(corpus: Corpus, cut: int) -> None:
    items = list(corpus.reader())
    cut %= len(items)
    first = corpus.reader()
    for item in items[:cut]:
        first.record(item)
    resumed = corpus.reader()
    resumed.load_state_dict(first.state_dict())
    rest = list(resumed)
    assert len(rest) == len(items) - cut
    for a, b in zip(rest, items[cut:]):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["doc_ids"], b["doc_ids"])


def test_resume_with_dataloader_workers(corpus: Corpus) -> None:
    full = list(loader(corpus.reader()))
    streams = by_worker(full)
    for cut in (3, len(full) - 2):  # mid-epoch, and after one worker may have run out
        reader = corpus.reader()
        for batch in full[:cut]:
            reader.record(batch)
        state = reader.state_dict()
        assert sum(c[0] for c in state["cursors"]) == sum(len(b["input_ids"]) for b in full[:cut])
        resumed = corpus.reader()
        resumed.load_state_dict(state)
        rest = by_worker(list(loader(resumed)))
        for worker, stream in streams.items():  # each worker continues its own stream exactly
            done = state["cursors"][worker][0]
            assert rest.get(worker, []) == stream[done:]


def test_resume_state_must_match(corpus: Corpus) -> None:
    reader = corpus.reader()
    reader.record(next(iter(loader(reader))))
    with pytest.raises(ValueError, match="seed"):
        corpus.reader(seed=1).load_state_dict(reader.state_dict())
    other = corpus.reader()
    other.load_state_dict(reader.state_dict())
    with pytest.raises(ValueError, match="2 DataLoader workers"):
        next(iter(other))


def test_odd_documents(corpus: Corpus, tmp_path: Path) -> None:
    ids = [5, 6, 7, 8, 20]  # null, "", U+FFFD, the text "<eos>", invalid UTF-8 (shard 0, row group 0)
    rows = pa.table(
        {"doc_id": ids, "shard_id": [0] * 5, "row_idx": ids, "row_group": [0] * 5, "priority": [1.0] * 5}
    )
    shard = ShardRef(str(corpus.snapshot.parent / "shard-0.parquet"), "text")
    reader = SelectionReader(
        write_snapshot(tmp_path / "odd.parquet", rows, {0: shard}), corpus.tokenizer, 1, corpus.eos
    )
    items = list(reader)
    assert sorted(reported(items).tolist()) == ids  # null and empty: just an EOS each, still reported
    got = torch.cat([item["input_ids"] for item in items]).numpy()
    assert np.array_equal(got, corpus.stream(reader.doc_order()))
    assert corpus.stream(np.array([5])).tolist() == [corpus.eos] == corpus.stream(np.array([6])).tolist()
    assert "caf\ufffd \ufffd\ufffd not utf-8" in corpus.tokenizer.decode(got.tolist())


def test_transformers_tokenizer_gives_the_same_sequences(corpus: Corpus) -> None:
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(tokenizer_object=corpus.tokenizer, eos_token="<eos>")
    reader = SelectionReader(corpus.snapshot, wrapped, SEQ_LEN, corpus.eos, seed=7, batch_docs=16)
    for a, b in zip(reader, corpus.reader(), strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["doc_ids"], b["doc_ids"])


def test_missing_shard_names_it(corpus: Corpus, tmp_path: Path) -> None:
    rows = pa.table({"doc_id": [0], "shard_id": [0], "row_idx": [0], "row_group": [0], "priority": [1.0]})
    path = write_snapshot(tmp_path / "s.parquet", rows, {0: ShardRef(str(tmp_path / "gone.parquet"), "text")})
    with pytest.raises(CorpusError, match="gone.parquet"):
        list(SelectionReader(path, corpus.tokenizer, SEQ_LEN, corpus.eos))


def test_pack_resumes_from_every_cursor() -> None:
    rng = np.random.default_rng(1)
    docs = [rng.integers(1, 100, rng.integers(0, 30)).tolist() for _ in range(60)]

    def batches(start: int) -> Iterator[tuple[list[list[int]], np.ndarray]]:
        for i in range(start, len(docs), 7):
            yield docs[i : i + 7], np.arange(i, min(i + 7, len(docs)))

    full = list(pack(batches(0), 10, 0))
    assert all(len(tokens) == 10 for tokens, _, _ in full)
    for k, (_, _, cursor) in enumerate(full):
        rest = list(pack(batches(cursor[1]), 10, 0, cursor))
        assert [(t.tolist(), d.tolist(), c) for t, d, c in rest] == [
            (t.tolist(), d.tolist(), c) for t, d, c in full[k + 1 :]
        ]


def test_many_documents_end_in_one_sequence(corpus: Corpus, tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": [""] * 20}), tmp_path / "empty.parquet")
    rows = pa.table({"doc_id": range(20), "shard_id": [0] * 20, "row_idx": range(20), "row_group": [0] * 20})
    rows = rows.append_column("priority", pa.array([0.0] * 20))
    path = write_snapshot(
        tmp_path / "s.parquet", rows, {0: ShardRef(str(tmp_path / "empty.parquet"), "text")}
    )
    items = list(SelectionReader(path, corpus.tokenizer, 4, corpus.eos))
    assert all(item["input_ids"].tolist() == [corpus.eos] * 4 for item in items)
    assert sorted(reported(items).tolist()) == list(range(20))  # four documents end in each sequence
    with pytest.raises(ValueError, match="max_docs_per_seq=3"):
        list(SelectionReader(path, corpus.tokenizer, 4, corpus.eos, max_docs_per_seq=3))


def test_collate_trims_doc_ids() -> None:
    items = [
        {
            "input_ids": torch.zeros(4, dtype=torch.long),
            "doc_ids": torch.tensor(ids),
            "position": torch.zeros(5),
        }
        for ids in ([-1, -1, -1, -1], [3, -1, -1, -1], [4, 5, -1, -1])
    ]
    batch = collate(items)
    assert batch["input_ids"].shape == (3, 4) and batch["position"].shape == (3, 5)
    assert batch["doc_ids"].tolist() == [[-1, -1], [3, -1], [4, 5]]
