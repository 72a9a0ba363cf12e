"""Streaming reader: fixed-length packed token sequences from a selection snapshot, for a PyTorch trainer."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer
from torch.utils.data import IterableDataset, get_worker_info

from corpus_agents.errors import CorpusError, one_line
from corpus_agents.scoring.corpus import ShardCheck, check_column, decode_texts, open_parquet, resolve_column
from corpus_agents.training.selection import ShardRef, read_snapshot
from corpus_agents.training.token_cache import TokenCache, gather

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: Fields of an item's "position" tensor: the reader's cursor just after that sequence.
POSITION_FIELDS = ("num_workers", "worker", "sequences", "doc", "token")
_OPEN_SHARDS = 8  # Parquet files kept open per process (windows revisit shards)


@dataclass
class _Plan:
    """The snapshot sorted by (shard, row group, row): the epoch-independent part of every worker's plan."""

    doc_id: np.ndarray
    shard_id: np.ndarray
    row_idx: np.ndarray
    row_group: np.ndarray
    #: Block b, one (shard, row group), is sorted rows block_starts[b]:block_starts[b + 1].
    block_starts: np.ndarray
    shards: dict[int, ShardRef]

    @classmethod
    def load(cls, path: str | os.PathLike) -> _Plan:
        table, shards = read_snapshot(path)
        cols = {c: table.column(c).to_numpy() for c in ("doc_id", "shard_id", "row_idx", "row_group")}
        order = np.lexsort((cols["row_idx"], cols["row_group"], cols["shard_id"]))
        cols = {c: v[order] for c, v in cols.items()}
        change = (np.diff(cols["shard_id"]) != 0) | (np.diff(cols["row_group"]) != 0)
        starts = (
            np.concatenate([[0], np.flatnonzero(change) + 1, [len(order)]]) if len(order) else np.zeros(1)
        )
        return cls(**cols, block_starts=starts.astype(np.int64), shards=shards)


class SelectionReader(IterableDataset):
    """Packed `seq_len`-token sequences of the documents of a selection snapshot, one pass per epoch.

    Order. Documents are read grouped by (shard, row group) "blocks", so every row group is read once per
    epoch (text column only). The order of the blocks is shuffled with (seed, epoch); consecutive shuffled
    blocks form windows of `window_blocks` blocks, and the documents inside a window are shuffled again
    (seeded per window). This is a shuffle buffer of one window: documents from one row group stay within a
    stretch of about one window's documents, so correlation inside a row group (e.g. a shard sorted by
    source) is broken only at that scale; larger windows mix better and hold more text in memory.

    Work split. The epoch's document order is cut into `world_size` equal contiguous parts (one per rank)
    and each rank's part into equal parts per DataLoader worker (`get_worker_info()`), so every selected
    document is read by exactly one (rank, worker). Parts are equal in documents (±1), not in tokens.

    Packing. Each document is tokenised without added special tokens (`batch_docs` documents per batch;
    special-token strings inside a text stay plain text) and followed by `eos_id`; the stream is cut into
    `seq_len` tokens per sequence (concatenate and chunk, no padding). Null, empty and invalid-UTF-8
    documents are read as text ("" or U+FFFD replacements): an empty document contributes just its EOS, so
    it is still reported once. The final partial sequence of each (rank, worker) is dropped, and the
    documents whose EOS falls in it are not reported. Ranks get equal documents, not equal sequences: stop
    every rank at a common step count.

    Items: `{"input_ids": LongTensor[seq_len], "doc_ids": LongTensor[k], "position": LongTensor[5]}`.
    `doc_ids` lists the documents whose last token (their EOS) is in this sequence, padded with -1, so a
    trainer reports each document exactly once. k = `max_docs_per_seq`, by default seq_len: the exact bound
    (every document has at least its EOS), so nothing is ever left out and PyTorch's default collate works;
    `collate_fn=collate` trims the padding to the batch's longest list. A smaller k makes items smaller and
    the reader raise ValueError if more documents than that end in one sequence (never a dropped report).

    Token cache. With `token_cache` (a directory; the trainer passes `<workspace>/cache/tokens`), each row
    group's selected documents are tokenised once per tokenizer and kept (`token_cache.TokenCache`); later
    epochs, rounds and runs read their tokens instead, and only rows the cache lacks are tokenised. The
    shard's bytes are checked as for a read before cached tokens are used, and the items are the same as
    without the cache. Shards without a registered fingerprint are not cached.

    Resume contract. `position` is the reader's cursor just after that sequence (POSITION_FIELDS: worker
    count, worker, sequences that worker has yielded, and the document index and token offset where its
    stream continues). The trainer passes every batch it consumes to `record(batch)`; `state_dict()` then
    holds the last consumed cursor of each worker. A reader given that state with `load_state_dict` (same
    snapshot, seed, seq_len, window_blocks, rank, world_size and number of DataLoader workers) continues
    each worker's stream exactly where it stopped, re-tokenising only the document it stopped in: every
    worker yields the same remaining sequences as without the interruption, and only the DataLoader's
    interleaving of workers restarts at worker 0. Call `load_state_dict` or `set_epoch` before creating
    the DataLoader iterator (workers copy the reader when they start; use non-persistent workers), and
    `set_epoch(e + 1)` after an epoch. Counting consumed batches would not do: the DataLoader takes workers
    round-robin only until one runs out, and a count would force re-tokenising everything consumed to find
    the spot again.
    """

    def __init__(
        self,
        snapshot: str | os.PathLike,
        tokenizer: Tokenizer | PreTrainedTokenizerBase,
        seq_len: int,
        eos_id: int,
        seed: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
        epoch: int = 0,
        batch_docs: int = 256,
        window_blocks: int = 4,
        max_docs_per_seq: int | None = None,
        token_cache: str | os.PathLike | None = None,
    ):
        if not (0 <= rank < world_size):
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        slots = seq_len if max_docs_per_seq is None else max_docs_per_seq
        if min(seq_len, batch_docs, window_blocks, slots) < 1 or min(seed, epoch) < 0:
            raise ValueError(
                "seq_len, batch_docs, window_blocks, max_docs_per_seq must be >= 1; seed, epoch >= 0"
            )
        self.snapshot = os.fspath(snapshot)
        self.tokenizer = _own_tokenizer(tokenizer)
        self.seq_len, self.eos_id, self.seed = seq_len, eos_id, seed
        self.rank, self.world_size, self.epoch = rank, world_size, epoch
        self.batch_docs, self.window_blocks = batch_docs, window_blocks
        self.max_docs_per_seq = slots
        self.num_docs = pq.read_metadata(self.snapshot).num_rows
        self._num_workers: int | None = None
        self._cursors: list[list[int]] = []
        self._plan: _Plan | None = None
        self._files: dict[str, tuple[pq.ParquetFile, np.ndarray]] = {}
        self._checks: dict[str, ShardCheck] = {}  # per shard: footer and row groups verified so far
        self._cache = None if token_cache is None else TokenCache(token_cache, self.tokenizer)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_plan"], state["_files"], state["_checks"] = None, {}, {}  # each worker process loads its own
        return state

    # ----- position ------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Start of `epoch` (its number is mixed into the shuffle seed; pass the round or epoch number)."""
        self.epoch, self._num_workers, self._cursors = epoch, None, []

    def record(self, batch: dict[str, torch.Tensor]) -> None:
        """Note a consumed item or batch (its "position" rows): advances the cursor of each worker in it."""
        for num_workers, worker, sequences, doc, token in batch["position"].reshape(-1, 5).tolist():
            if self._num_workers is None:
                self._num_workers, self._cursors = num_workers, [[0, 0, 0] for _ in range(num_workers)]
            elif num_workers != self._num_workers:
                raise ValueError(f"batch from {num_workers} workers, earlier ones from {self._num_workers}")
            if sequences > self._cursors[worker][0]:
                self._cursors[worker] = [sequences, doc, token]

    def _config(self) -> dict[str, int]:
        return {
            "num_docs": self.num_docs,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "window_blocks": self.window_blocks,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    def state_dict(self) -> dict[str, Any]:
        """The consumed position: epoch and, per DataLoader worker, [sequences, doc, token] (see class doc)."""
        cursors = [list(c) for c in self._cursors]
        return {**self._config(), "epoch": self.epoch, "num_workers": self._num_workers, "cursors": cursors}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()` output: the next iteration continues right after what was consumed."""
        for key, value in self._config().items():
            if state[key] != value:
                raise ValueError(f"reader state has {key}={state[key]}, this reader {value}: not resumable")
        self.epoch, self._num_workers = state["epoch"], state["num_workers"]
        self._cursors = [list(c) for c in state["cursors"]]

    # ----- planning --------------------------------------------------------------------------------------
    def _get_plan(self) -> _Plan:
        if self._plan is None:
            self._plan = _Plan.load(self.snapshot)
            if len(self._plan.doc_id) != self.num_docs:
                raise ValueError(f"snapshot {self.snapshot} changed while in use")
        return self._plan

    def _windows(self, plan: _Plan) -> tuple[list[np.ndarray], np.ndarray]:
        """This epoch's windows (block indices each) and their cumulative document counts."""
        num_blocks = len(plan.block_starts) - 1
        blocks = np.random.default_rng([self.seed, self.epoch]).permutation(num_blocks)
        windows = [blocks[i : i + self.window_blocks] for i in range(0, num_blocks, self.window_blocks)]
        sizes = np.diff(plan.block_starts)
        counts = [int(sizes[w].sum()) for w in windows]
        return windows, np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])

    def _share(self, worker: int, num_workers: int) -> tuple[int, int]:
        """[lo, hi) of the epoch's document order read by this rank's `worker`."""
        n = self.num_docs
        lo, hi = n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size
        return lo + (hi - lo) * worker // num_workers, lo + (hi - lo) * (worker + 1) // num_workers

    def _parts(
        self, worker: int, num_workers: int, start_doc: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(window blocks, positions in the window) of this worker's documents from `start_doc`, in order.

        A window's documents are numbered by concatenating its blocks' rows in window order; the positions
        are a seeded permutation of those numbers, cut to this worker's share of the epoch order.
        """
        plan = self._get_plan()
        windows, cum = self._windows(plan)
        lo, hi = self._share(worker, num_workers)
        lo += start_doc
        for k in range(np.searchsorted(cum, lo, side="right") - 1 if lo < hi else len(windows), len(windows)):
            if cum[k] >= hi:
                break
            positions = np.random.default_rng([self.seed, self.epoch, 1, k]).permutation(cum[k + 1] - cum[k])
            yield windows[k], positions[max(lo - cum[k], 0) : hi - cum[k]]

    @staticmethod
    def _window_rows(plan: _Plan, window: np.ndarray) -> np.ndarray:
        """Sorted-snapshot indices of a window's documents, blocks concatenated in window order."""
        return np.concatenate([np.arange(plan.block_starts[b], plan.block_starts[b + 1]) for b in window])

    def doc_order(self, worker: int = 0, num_workers: int = 1) -> np.ndarray:
        """doc_ids this rank's `worker` (of `num_workers`) reads this epoch, in reading order."""
        plan = self._get_plan()
        parts = [
            plan.doc_id[self._window_rows(plan, w)[pos]] for w, pos in self._parts(worker, num_workers, 0)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    # ----- reading ---------------------------------------------------------------------------------------
    def _open(self, ref: ShardRef) -> tuple[pq.ParquetFile, np.ndarray]:
        """A shard's ParquetFile and the first row of each row group (a few files are kept open); its footer
        is checked against the registration the first time."""
        uri = ref.uri
        check = self._checks.get(uri)
        if check is None and (check := ref.check()) is not None:
            check.check_footer()
            self._checks[uri] = check
        if uri not in self._files:
            if len(self._files) >= _OPEN_SHARDS:
                del self._files[next(iter(self._files))]
            pf = open_parquet(uri)
            rows = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
            self._files[uri] = pf, np.concatenate([[0], np.cumsum(rows, dtype=np.int64)])
        return self._files[uri]

    def _checked_block(self, plan: _Plan, b: int) -> tuple[ShardRef, int, pq.ParquetFile, np.ndarray]:
        """(shard, row group, open file, row-group start rows) of block b, its rows checked to lie in the row
        group and its bytes against the registration (footer once, the row group's hash once)."""
        s, e = plan.block_starts[b], plan.block_starts[b + 1]
        ref = plan.shards[int(plan.shard_id[s])]
        group = int(plan.row_group[s])
        try:
            pf, group_starts = self._open(ref)
            check_column(pf.schema_arrow, ref.text_column, ref.uri)
            rows = plan.row_idx[s:e]  # sorted
            if group >= len(group_starts) - 1 or not (
                group_starts[group] <= rows[0] and rows[-1] < group_starts[group + 1]
            ):
                raise CorpusError(f"shard {ref.uri}: the snapshot's rows are not in row group {group}")
            if ref.uri in self._checks:  # one hash of the row group's bytes, the first time it is read
                self._checks[ref.uri].check_row_group(pf.metadata, group)
        except (OSError, pa.ArrowException) as exc:
            raise CorpusError(f"shard {ref.uri}: cannot read row group {group}: {one_line(exc)}") from None
        return ref, group, pf, group_starts

    def _read_rows(
        self, ref: ShardRef, group: int, pf: pq.ParquetFile, group_starts: np.ndarray, rows: np.ndarray
    ) -> pa.Array:
        """Texts of `rows` (shard row indices, in the row group) from one read of the text column, as large_string."""
        try:
            table = pf.read_row_group(group, columns=[ref.text_column.split(".")[0]])
            return (
                resolve_column(table, ref.text_column)
                .take(pa.array(rows - group_starts[group]))
                .cast(pa.large_string())
            )
        except (OSError, pa.ArrowException) as exc:
            raise CorpusError(f"shard {ref.uri}: cannot read row group {group}: {one_line(exc)}") from None

    def _read_block(self, plan: _Plan, b: int) -> pa.Array:
        """Texts of block b's selected rows (one row-group read of the text column), as large_string."""
        rows = plan.row_idx[plan.block_starts[b] : plan.block_starts[b + 1]]
        return self._read_rows(*self._checked_block(plan, b), rows)

    def _block_tokens(self, plan: _Plan, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(token counts, tokens concatenated) of block b's selected rows, through the token cache: the
        shard's bytes are checked first as for a read, then only rows the cache lacks are read, tokenised
        and added to it."""
        rows = plan.row_idx[plan.block_starts[b] : plan.block_starts[b + 1]]
        ref, group, pf, group_starts = self._checked_block(plan, b)
        assert self._cache is not None
        return self._cache.tokens(
            ref,
            group,
            rows,
            lambda missing: flatten(
                self._encode(decode_texts(self._read_rows(ref, group, pf, group_starts, missing)))
            ),
        )

    def document_tokens(self) -> int:
        """Tokens the snapshot's documents are read as, all of them: each document's tokens under this
        reader's tokenizer plus its EOS. Through the token cache when there is one (rows it lacks are
        tokenised and added, so a later read of the snapshot finds them), else by tokenising every text."""
        plan = self._get_plan()
        total = len(plan.doc_id)  # the EOS of each
        for b in range(len(plan.block_starts) - 1):
            if self._cache is not None:
                total += int(self._block_tokens(plan, b)[0].sum())
            else:
                total += sum(map(len, self._encode(decode_texts(self._read_block(plan, b)))))
        return total

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return encode_texts(self.tokenizer, texts)

    def _token_batches(
        self, worker: int, num_workers: int, start_doc: int
    ) -> Iterator[tuple[list[list[int]] | Flat, np.ndarray]]:
        """(token ids per document, doc_ids) in reading order, `batch_docs` documents at a time."""
        plan = self._get_plan()
        for window, positions in self._parts(worker, num_workers, start_doc):
            rows = self._window_rows(plan, window)
            sizes = np.diff(plan.block_starts)[window]
            needed = set(np.searchsorted(np.cumsum(sizes), positions, side="right").tolist())
            if self._cache is not None:
                # Blocks of the window that this worker does not need (a window split between workers): no tokens.
                parts = [
                    self._block_tokens(plan, int(b))
                    if j in needed
                    else (np.zeros(int(n), np.int64), np.zeros(0, np.uint32))
                    for j, (b, n) in enumerate(zip(window, sizes))
                ]
                lengths = np.concatenate([p[0] for p in parts])
                tokens = np.concatenate([p[1] for p in parts])
                starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
                for i in range(0, len(positions), self.batch_docs):
                    part = positions[i : i + self.batch_docs]
                    yield (
                        Flat(lengths[part], gather(tokens, starts[part], lengths[part])),
                        plan.doc_id[rows[part]],
                    )
                continue
            # Blocks of the window that this worker does not need (a window split between workers) stay nulls.
            chunks = [
                self._read_block(plan, int(b)) if j in needed else pa.nulls(int(n), pa.large_string())
                for j, (b, n) in enumerate(zip(window, sizes))
            ]
            texts = pa.concat_arrays(chunks)
            for i in range(0, len(positions), self.batch_docs):
                part = positions[i : i + self.batch_docs]
                yield self._encode(decode_texts(texts.take(pa.array(part)))), plan.doc_id[rows[part]]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self._num_workers is not None and self._num_workers != num_workers:
            raise ValueError(
                f"reader state was recorded with {self._num_workers} DataLoader workers, this run has "
                f"{num_workers}: resume with the same num_workers"
            )
        sequences, doc, token = self._cursors[worker] if self._cursors else (0, 0, 0)
        batches = self._token_batches(worker, num_workers, doc)
        for tokens, doc_ids, cursor in pack(batches, self.seq_len, self.eos_id, (sequences, doc, token)):
            if len(doc_ids) > self.max_docs_per_seq:
                raise ValueError(
                    f"{len(doc_ids)} documents end in one sequence, more than max_docs_per_seq="
                    f"{self.max_docs_per_seq}: raise it (seq_len is always enough)"
                )
            padded = torch.full((self.max_docs_per_seq,), -1, dtype=torch.long)
            padded[: len(doc_ids)] = torch.from_numpy(doc_ids)
            yield {
                "input_ids": torch.from_numpy(tokens),
                "doc_ids": padded,
                "position": torch.tensor([num_workers, worker, *cursor], dtype=torch.long),
            }


@dataclass
class Flat:
    """Token ids of several documents as arrays: document i has tokens[sum(lengths[:i]):][:lengths[i]]."""

    lengths: np.ndarray
    tokens: np.ndarray


def flatten(id_lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(token counts, tokens concatenated, int64) of token id lists."""
    lengths = np.fromiter(map(len, id_lists), np.int64, len(id_lists))
    return lengths, np.fromiter(chain.from_iterable(id_lists), np.int64, int(lengths.sum()))


def pack(
    batches: Iterator[tuple[Sequence[Sequence[int]] | Flat, np.ndarray]],
    seq_len: int,
    eos_id: int,
    start: tuple[int, int, int] = (0, 0, 0),
) -> Iterator[tuple[np.ndarray, np.ndarray, tuple[int, int, int]]]:
    """Concatenate documents (each + EOS) and cut them into `seq_len` tokens; the partial tail is dropped.

    `batches` yield (token ids per document, as lists or `Flat`, doc_ids). `start` = (sequences already yielded, index of the
    first document, tokens of it to skip). Yields (tokens, doc_ids ending in them, cursor after them), where
    the cursor has the same form as `start`, so packing resumes exactly from any yielded cursor.
    """
    sequences, first_doc, first_skip = start
    pending = np.zeros(0, np.int64)  # tokens not yet yielded; they start at token `first_skip` of `first_doc`
    ends = np.zeros(0, np.int64)  # exclusive end, in `pending`, of each pending document
    pending_ids = np.zeros(0, np.int64)
    skip = first_skip
    for id_lists, doc_ids in batches:
        if isinstance(id_lists, Flat):
            lengths, flat = id_lists.lengths.astype(np.int64), id_lists.tokens.astype(np.int64)
        else:
            lengths, flat = flatten(id_lists)
        tokens = np.insert(flat, np.cumsum(lengths), eos_id)
        lengths += 1
        if skip:  # resuming inside the first document
            tokens, lengths[0], skip = tokens[skip:], lengths[0] - skip, 0
        ends = np.concatenate([ends, len(pending) + np.cumsum(lengths)])
        pending = np.concatenate([pending, tokens])
        pending_ids = np.concatenate([pending_ids, np.asarray(doc_ids, np.int64)])
        n = len(pending) // seq_len
        if not n:
            continue
        cuts = np.arange(1, n + 1, dtype=np.int64) * seq_len
        done = np.searchsorted(ends, cuts, side="right")  # documents ended by each cut
        doc_starts = np.concatenate([[-first_skip], ends])[done]  # start of the document each cut is in
        for s in range(n):
            sequences += 1
            cursor = (sequences, first_doc + int(done[s]), int(cuts[s] - doc_starts[s]))
            lo = done[s - 1] if s else 0
            yield pending[cuts[s] - seq_len : cuts[s]], pending_ids[lo : done[s]], cursor
        first_doc, first_skip = cursor[1], cursor[2]
        pending, ends, pending_ids = pending[cuts[-1] :], ends[done[-1] :] - cuts[-1], pending_ids[done[-1] :]


def encode_texts(tokenizer: Tokenizer | PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of each text as the trainer reads documents: no special tokens added, and special-token
    strings inside a text stay plain text (the reader appends the EOS itself)."""
    if isinstance(tokenizer, Tokenizer):
        tokenizer.encode_special_tokens = True  # a setting that pickling to workers does not keep
        return [e.ids for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    out = tokenizer(
        texts,
        add_special_tokens=False,
        split_special_tokens=True,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    return out["input_ids"]


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Default collation, with doc_ids cut to the longest list in the batch (smaller batches between processes)."""
    doc_ids = torch.stack([item["doc_ids"] for item in items])
    width = int((doc_ids >= 0).sum(dim=1).max())
    return {
        "input_ids": torch.stack([item["input_ids"] for item in items]),
        "doc_ids": doc_ids[:, :width],
        "position": torch.stack([item["position"] for item in items]),
    }


def _own_tokenizer(tokenizer: Tokenizer | PreTrainedTokenizerBase) -> Tokenizer | PreTrainedTokenizerBase:
    """A `tokenizers.Tokenizer` is copied without truncation and padding (the reader changes its settings)."""
    if isinstance(tokenizer, Tokenizer):
        copy = Tokenizer.from_str(tokenizer.to_str())
        copy.no_truncation()
        copy.no_padding()
        return copy
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("tokenizer must be a tokenizers.Tokenizer or a transformers fast tokenizer")
    return tokenizer


def snapshot_tokens(
    snapshot: str | os.PathLike,
    tokenizer: Tokenizer | PreTrainedTokenizerBase,
    token_cache: str | os.PathLike | None = None,
) -> int:
    """Tokens of every document of a selection snapshot as a `SelectionReader` reads them: each document's
    tokens plus its EOS (`SelectionReader.document_tokens`)."""
    return SelectionReader(snapshot, tokenizer, 1, 0, token_cache=token_cache).document_tokens()


__all__ = [
    "POSITION_FIELDS",
    "Flat",
    "SelectionReader",
    "collate",
    "encode_texts",
    "flatten",
    "pack",
    "snapshot_tokens",
]
