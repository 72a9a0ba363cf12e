"""Token cache: the documents of each (tokenizer, shard row group) tokenised once, reused by later rounds and runs.

Layout: `<root>/<tokenizer key>/<shard key>/rg-<group>.npz`, root `<workspace>/cache/tokens`. The tokenizer
key hashes the tokenizer's content (its JSON without truncation and padding), the shard key the shard's
registered fingerprint (size and footer hash). An entry holds the rows tokenised so far (shard row
indices, sorted), each row's token offsets, the tokens (uint16 when the ids fit, else uint32; no special
tokens, no EOS) and the row group's registered hash. It holds the rows that selections have needed so
far: a later selection needing rows it lacks tokenises only those and rewrites the entry.

Safety. Entries are written whole through `storage.atomic_path`, so a kill -9 mid-write leaves the old
entry or none, never a torn one in use; concurrent writers (DataLoader workers, ranks) each publish a
complete entry, and the last one wins (rows only the other had are tokenised again later). An entry that
cannot be read, is inconsistent, or records another row-group hash is a miss and is rewritten. A shard
re-registered with other bytes has another key; one changed on disk behind the catalog fails the reader's
own footer and row-group checks, which run before any cached token of it is used.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from corpus_agents.scoring.corpus import unpack_doc_ids
from corpus_agents.storage import atomic_path

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase

    from corpus_agents.training.selection import ShardRef

#: Bumped when what an entry means changes (how texts are decoded or tokenised): old entries are not read.
FORMAT = "1"


def tokenizer_key(tokenizer: Tokenizer | PreTrainedTokenizerBase) -> str:
    """Content hash of a `tokenizers.Tokenizer` or a transformers fast tokenizer's backend, without the
    truncation and padding settings (which the reader turns off and transformers changes per call)."""
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if backend.truncation is not None or backend.padding is not None:
        backend = Tokenizer.from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"token-cache-{FORMAT}\n".encode())
    h.update(backend.to_str().encode())
    return h.hexdigest()


def _shard_key(ref: ShardRef) -> str | None:
    if ref.fingerprint is None:  # an old snapshot: nothing to key the shard's bytes by, so no caching
        return None
    return hashlib.blake2b(ref.fingerprint.encode(), digest_size=16).hexdigest()


def _group_hash(ref: ShardRef, group: int) -> str:
    hashes = ref.row_group_hashes
    return hashes[group] if hashes is not None and group < len(hashes) else ""


@dataclass
class TokenEntry:
    """Tokens of some rows of one row group: row `rows[i]` has tokens[offsets[i]:offsets[i + 1]]."""

    rows: np.ndarray  # int64, strictly increasing shard row indices
    offsets: np.ndarray  # int64, len(rows) + 1, from 0 to len(tokens)
    tokens: np.ndarray  # uint32 (uint16 as stored when every id fits)

    @classmethod
    def of(cls, rows: np.ndarray, lengths: np.ndarray, tokens: np.ndarray) -> TokenEntry:
        """An entry from rows in any order, their token counts and their tokens concatenated in that order."""
        rows, lengths = np.asarray(rows, np.int64), np.asarray(lengths, np.int64)
        order = np.argsort(rows, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        if (order == np.arange(len(rows))).all():
            return cls(rows, offsets, np.asarray(tokens, np.uint32))
        lengths, tokens = (
            lengths[order],
            gather(np.asarray(tokens, np.uint32), offsets[:-1][order], lengths[order]),
        )
        return cls(rows[order], np.concatenate([[0], np.cumsum(lengths)]), tokens)

    def missing(self, rows: np.ndarray) -> np.ndarray:
        """Those of `rows` this entry does not hold."""
        return rows[~np.isin(rows, self.rows)]

    def merged(self, other: TokenEntry) -> TokenEntry:
        """This entry with `other`'s rows added (rows of both keep this entry's tokens)."""
        new = ~np.isin(other.rows, self.rows)
        rows = np.concatenate([self.rows, other.rows[new]])
        lengths = np.concatenate([np.diff(self.offsets), np.diff(other.offsets)[new]])
        tokens = np.concatenate(
            [self.tokens, gather(other.tokens, other.offsets[:-1][new], lengths[len(self.rows) :])]
        )
        return TokenEntry.of(rows, lengths, tokens)

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(token counts, tokens concatenated) of `rows`, in the given order; every row must be held."""
        at = np.searchsorted(self.rows, rows)
        lengths = self.offsets[at + 1] - self.offsets[at]
        return lengths, gather(self.tokens, self.offsets[at], lengths)

    def consistent(self) -> bool:
        n = len(self.rows)
        return (
            self.offsets.shape == (n + 1,)
            and int(self.offsets[0]) == 0
            and int(self.offsets[-1]) == len(self.tokens)
            and bool((np.diff(self.offsets) >= 0).all())
            and bool((np.diff(self.rows) > 0).all())
        )


def gather(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """tokens[starts[0]:starts[0]+lengths[0]], tokens[starts[1]:...], ... concatenated, without a Python loop."""
    total = int(lengths.sum())
    if not total:
        return tokens[:0]
    shift = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return tokens[np.arange(total, dtype=np.int64) + shift]


def narrow(tokens: np.ndarray) -> np.ndarray:
    """Token ids as uint16 when every id fits (vocabularies up to 65,536: half the disk), else uint32."""
    return tokens.astype(np.uint16 if not len(tokens) or int(tokens.max()) < 1 << 16 else np.uint32)


class TokenCache:
    """The token cache of one tokenizer under `root` (see the module doc)."""

    def __init__(self, root: str | os.PathLike, tokenizer: Tokenizer | PreTrainedTokenizerBase | str):
        key = tokenizer if isinstance(tokenizer, str) else tokenizer_key(tokenizer)
        self.dir = Path(root) / key

    def path(self, ref: ShardRef, group: int) -> Path | None:
        """The entry file of a row group; None for a shard without a registered fingerprint (not cached)."""
        shard = _shard_key(ref)
        return None if shard is None else self.dir / shard / f"rg-{group:06d}.npz"

    def load(self, ref: ShardRef, group: int) -> TokenEntry | None:
        """The row group's entry, or None if there is none usable (absent, unreadable, inconsistent, or
        recorded for other row-group bytes)."""
        path = self.path(ref, group)
        if path is None:
            return None
        try:
            with np.load(path) as z:
                if str(z["row_group_hash"]) != _group_hash(ref, group):
                    return None
                entry = TokenEntry(z["rows"].astype(np.int64), z["offsets"].astype(np.int64), z["tokens"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None
        return entry if entry.tokens.dtype in (np.uint16, np.uint32) and entry.consistent() else None

    def store(self, ref: ShardRef, group: int, entry: TokenEntry) -> None:
        """Write the row group's entry atomically; a cache that cannot be written (disk full, read-only
        workspace) is skipped, never an error of the reader."""
        path = self.path(ref, group)
        if path is None:
            return
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.savez(
                    fh,
                    rows=entry.rows,
                    offsets=entry.offsets,
                    tokens=narrow(entry.tokens),
                    row_group_hash=np.array(_group_hash(ref, group)),
                )
        except OSError:
            pass

    def tokens(
        self,
        ref: ShardRef,
        group: int,
        rows: np.ndarray,
        encode: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    ) -> tuple[np.ndarray, np.ndarray]:
        """(token counts, tokens concatenated) of `rows` (shard rows in row group `group`), from the row
        group's entry; the rows it lacks are tokenised by `encode(missing rows)` -> (token counts, tokens
        concatenated) and added to it. Check the shard's bytes before calling (as a read does)."""
        entry = self.load(ref, group)
        missing = rows if entry is None else entry.missing(rows)
        if len(missing):
            new = TokenEntry.of(missing, *encode(missing))
            entry = new if entry is None else entry.merged(new)
            self.store(ref, group, entry)
        return entry.take(rows)

    def token_counts(self, shards: Mapping[int, ShardRef], doc_ids: np.ndarray) -> np.ndarray:
        """Tokens of each of `doc_ids` (no special tokens, no EOS) where cached, -1 where not."""
        doc_ids = np.asarray(doc_ids, np.int64)
        out = np.full(len(doc_ids), -1, np.int64)
        shard_ids, rows = unpack_doc_ids(doc_ids)
        for shard_id in np.unique(shard_ids).tolist():
            ref = shards.get(int(shard_id))
            path = None if ref is None else self.path(ref, 0)
            if path is None or not path.parent.is_dir():
                continue
            want = np.flatnonzero(shard_ids == shard_id)
            for f in sorted(path.parent.glob("rg-*.npz")):
                entry = self.load(ref, int(f.stem.removeprefix("rg-")))
                if entry is None or not len(entry.rows):
                    continue
                at = np.minimum(np.searchsorted(entry.rows, rows[want]), len(entry.rows) - 1)
                hit = entry.rows[at] == rows[want]
                out[want[hit]] = (entry.offsets[at + 1] - entry.offsets[at])[hit]
        return out


def cached_token_counts(
    root: str | os.PathLike,
    tokenizer: Tokenizer | PreTrainedTokenizerBase | str,
    shards: Mapping[int, ShardRef],
    doc_ids: Any,
) -> np.ndarray:
    """Real token counts (no special tokens, no EOS) of `doc_ids` under `tokenizer` (or its `tokenizer_key`)
    where the token cache under `root` (`<workspace>/cache/tokens`) holds them, -1 where it does not.
    `shards` maps shard ids to their registrations (a snapshot's shard map, or `ShardRef.of` each catalog
    shard)."""
    return TokenCache(root, tokenizer).token_counts(shards, np.asarray(doc_ids, np.int64))


def token_cache_dir(workspace: str | os.PathLike) -> Path:
    """Where a workspace keeps its token cache."""
    return Path(workspace) / "cache" / "tokens"


__all__ = ["TokenCache", "TokenEntry", "cached_token_counts", "token_cache_dir", "tokenizer_key"]
