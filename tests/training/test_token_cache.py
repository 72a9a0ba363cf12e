"""The reader's token cache: identical batches, reuse across runs, invalidation, corruption and kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from corpus_agents.scoring.corpus import ShardChangedError, decode_texts, row_group_hashes, shard_fingerprint
from corpus_agents.training.reader import SelectionReader
from corpus_agents.training.selection import ShardRef, write_snapshot
from corpus_agents.training.token_cache import TokenCache, TokenEntry, cached_token_counts, tokenizer_key
from tests.training.test_reader import ODD_TEXTS, SEQ_LEN, by_worker, loader, stdlib_chunks

ROWS, GROUP = 120, 20


def write_shards(root: Path, chunks: list[str], shards: int = 2) -> dict[int, ShardRef]:
    """Shards of ROWS rows (row groups of GROUP) registered as `init` does: fingerprint and row-group hashes."""
    refs = {}
    for s in range(shards):
        raw: list[bytes | None] = [c.encode() for c in chunks[s * ROWS : (s + 1) * ROWS]]
        raw[3 : 3 + len(ODD_TEXTS)] = [None if t is None else t.encode() for t in ODD_TEXTS]
        raw[9] = b"caf\xe9 \xff not utf-8 " + (raw[9] or b"")
        path = root / f"shard-{s}.parquet"
        pq.write_table(
            pa.table({"text": pa.array(raw, pa.binary()).view(pa.string())}), path, row_group_size=GROUP
        )
        hashes = tuple(row_group_hashes(str(path), pq.read_metadata(path)))
        refs[s] = ShardRef(str(path), "text", shard_fingerprint(str(path))[0], hashes)
    return refs


def snapshot(path: Path, refs: dict[int, ShardRef], fraction: float, seed: int) -> tuple[Path, np.ndarray]:
    keep = np.random.default_rng(seed).random((len(refs), ROWS)) < fraction
    shard, row = np.nonzero(keep)
    doc_ids = shard.astype(np.int64) << 32 | row
    table = pa.table(
        {
            "doc_id": doc_ids,
            "shard_id": shard,
            "row_idx": row,
            "row_group": row // GROUP,
            "priority": np.ones(len(row)),
        }
    )
    return write_snapshot(path, table, refs), doc_ids


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(stdlib_chunks(300), trainer)
    return tok


@pytest.fixture()
def setup(tmp_path: Path, tokenizer: Tokenizer) -> tuple[Path, dict[int, ShardRef], Tokenizer, int]:
    refs = write_shards(tmp_path, stdlib_chunks(2 * ROWS))
    return tmp_path, refs, tokenizer, tokenizer.token_to_id("<eos>")


def items(snap: Path, tokenizer: Tokenizer, eos: int, cache: Path | None, **kw: object) -> list[dict]:
    reader = SelectionReader(snap, tokenizer, SEQ_LEN, eos, seed=3, batch_docs=8, token_cache=cache, **kw)
    return list(reader)


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("input_ids", "doc_ids", "position")
    )


def no_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self: SelectionReader, texts: list[str]) -> list[list[int]]:
        raise AssertionError(f"tokenised {len(texts)} texts although they are cached")

    monkeypatch.setattr(SelectionReader, "_encode", fail)


def test_identical_batches_with_and_without_cache(setup, tmp_path: Path) -> None:
    root, refs, tok, eos = setup
    snap, _ = snapshot(root / "s.parquet", refs, 0.6, 0)
    plain = items(snap, tok, eos, None)
    assert same(items(snap, tok, eos, root / "cache"), plain)  # cold: tokenises and writes
    assert same(items(snap, tok, eos, root / "cache"), plain)  # warm: reads the entries
    # two DataLoader workers (windows split between them) and a resumed reader give the same as uncached
    cached = SelectionReader(snap, tok, SEQ_LEN, eos, seed=3, batch_docs=8, token_cache=root / "cache2")
    uncached = SelectionReader(snap, tok, SEQ_LEN, eos, seed=3, batch_docs=8)
    assert by_worker(list(loader(cached))) == by_worker(list(loader(uncached)))
    resumed = SelectionReader(snap, tok, SEQ_LEN, eos, seed=3, batch_docs=8, token_cache=root / "cache")
    resumed.record(plain[4])
    assert same(list(resumed), plain[5:])


def test_cache_reused_by_later_runs_and_selections(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    root, refs, tok, eos = setup
    first, first_ids = snapshot(root / "a.parquet", refs, 0.5, 1)
    second, second_ids = snapshot(root / "b.parquet", refs, 0.5, 2)
    cache = root / "cache"
    items(first, tok, eos, cache)
    counts = cached_token_counts(cache, tok, refs, second_ids)
    known = np.isin(second_ids, first_ids)
    assert (counts[~known] == -1).all() and (counts[known] >= 0).all()

    encoded: list[int] = []
    encode = SelectionReader._encode
    monkeypatch.setattr(SelectionReader, "_encode", lambda self, t: encoded.append(len(t)) or encode(self, t))
    expected = items(second, tok, eos, None)
    encoded.clear()
    assert same(items(second, tok, eos, cache), expected)
    assert sum(encoded) == (~known).sum()  # a later selection tokenises only the rows the cache lacks

    no_encoding(monkeypatch)  # a later run (a new reader, same tokenizer) tokenises nothing
    assert same(items(second, Tokenizer.from_str(tok.to_str()), eos, cache), expected)
    assert same(items(first, tok, eos, cache), items(first, tok, eos, cache))
    texts = decode_texts(pq.read_table(refs[0].uri).column("text").combine_chunks())
    tok.encode_special_tokens = True
    real = [len(tok.encode(texts[r], add_special_tokens=False).ids) for r in (second_ids[:5] & 0xFFFFFFFF)]
    assert cached_token_counts(cache, tokenizer_key(tok), refs, second_ids[:5]).tolist() == real


def test_changed_shard_invalidates(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    root, refs, tok, eos = setup
    snap, _ = snapshot(root / "s.parquet", refs, 0.7, 0)
    cache = root / "cache"
    items(snap, tok, eos, cache)
    # the shard rewritten behind the catalog: the reader's checks fail before any cached token is used
    chunks = stdlib_chunks(4 * ROWS)
    changed = write_shards(root, chunks[2 * ROWS :] + chunks[: 2 * ROWS])
    with pytest.raises(ShardChangedError, match="changed since it was registered"):
        items(snap, tok, eos, cache)
    # re-registered: another key, so the new text is tokenised, never the old tokens served
    new_snap, _ = snapshot(root / "t.parquet", changed, 0.7, 0)
    assert same(items(new_snap, tok, eos, cache), items(new_snap, tok, eos, None))
    # a row-group hash that differs in an entry (same footer) is a miss too
    ref = changed[0]
    other = ShardRef(ref.uri, "text", ref.fingerprint, ("0" * 16,) + ref.row_group_hashes[1:])
    assert TokenCache(cache, tok).load(other, 0) is None and TokenCache(cache, tok).load(ref, 0) is not None


def test_corrupt_entries_are_misses(setup) -> None:
    root, refs, tok, eos = setup
    snap, _ = snapshot(root / "s.parquet", refs, 0.6, 0)
    cache = root / "cache"
    expected = items(snap, tok, eos, cache)
    tc = TokenCache(cache, tok)
    entries = sorted(tc.dir.rglob("rg-*.npz"))
    assert len(entries) == 2 * ROWS // GROUP
    entries[0].write_bytes(entries[0].read_bytes()[:100])  # torn
    entries[1].write_bytes(b"not a zip file")
    good = tc.load(refs[0], 2)
    assert good is not None
    bad = TokenEntry(good.rows, good.offsets, good.tokens[:-1])  # offsets beyond the tokens
    tc.store(refs[0], 2, bad)
    assert tc.load(refs[0], 2) is None
    assert same(items(snap, tok, eos, cache), expected)
    assert tc.load(refs[0], 0) is not None and tc.load(refs[0], 2) is not None  # rewritten


KILLED_WRITER = """
import sys, time
import numpy as np
from tokenizers import Tokenizer
import corpus_agents.training.token_cache as tc
from corpus_agents.training.reader import SelectionReader

def slow_savez(fh, **arrays):
    fh.write(b"PK" + b"x" * 1000)  # half an entry on disk
    fh.flush()
    print("writing", flush=True)
    time.sleep(60)

tc.np.savez = slow_savez
snap, tok, eos, cache = sys.argv[1], Tokenizer.from_file(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
list(SelectionReader(snap, tok, SEQ_LEN, eos, seed=3, batch_docs=8, token_cache=cache))
""".replace("SEQ_LEN", str(SEQ_LEN))


def test_kill_9_while_writing_leaves_no_torn_entry(setup) -> None:
    root, refs, tok, eos = setup
    snap, _ = snapshot(root / "s.parquet", refs, 0.6, 0)
    cache = root / "cache"
    tok.save(str(root / "tok.json"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(KILLED_WRITER),
            str(snap),
            str(root / "tok.json"),
            str(eos),
            str(cache),
        ],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"writing\n"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert list(cache.rglob(".rg-*.npz.tmp-*"))  # the half-written entry is under its temporary name only
    assert not list(cache.rglob("rg-*.npz"))
    assert same(items(snap, tok, eos, cache), items(snap, tok, eos, None))
    assert len(list(cache.rglob("rg-*.npz"))) == 2 * ROWS // GROUP
