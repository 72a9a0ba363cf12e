"""Selection inside any training loop: the method's rounds (docs/algorithm.md#rounds) as one object that a
trainer calls at round boundaries, and the resumable stream of the selected data it trains on.

A `Selector` owns one run's console on the workspace catalog (rank 0), the reference tasks, the run's log
and its compute accounts. A training loop:

    selector.start(model)                        # new run: the random warm-up selection (round 0)
    loader = DataLoader(selector.dataset(), batch_size=B)   # runs out at each round boundary
    for step in ...:
        if selector.due(step):
            selector.advance(model, optimizer, step)  # probes, rewards, console update, next selection
            (iterate the loader again: the round's data)
        ... train on a batch ...
        selector.consumed(B)                     # what was trained on (each micro-batch, in order)
        checkpoint: selector.state_dict()        # at any step: the round, the stream position, compute
    selector.finish(model, step)

`Trainer` (training/trainer.py) and the Hugging Face callback (training/hf.py) are such loops. Rewards are
measured on the caller's model: any `torch.nn.Module` causal LM called as `model(input_ids=...)` that
returns logits (a tensor, or an output with `.logits`), see training/rewards.py.

What a run started with is recorded in WS/runs/<run_id>/run.json: the whole config and each agent's
fingerprint. Resuming refuses a different config (unless the changed keys are named) and a changed agent
(unless its memory is reset); `init_from` refuses a source run whose agents have changed since.

Under `torchrun` rank 0 alone opens the catalog and runs the console: it draws the probes and broadcasts
their doc ids, every rank rewards its share and rank 0 gathers the rewards, updates the console and writes
the selection while the others wait at a barrier; every rank then reads its own slice of the selection.
`state_dict` gathers every rank's stream position (all ranks call it) and `load_state_dict` gives each rank
its own.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from corpus_agents.config import PipelineConfig
from corpus_agents.errors import CorpusAgentsError
from corpus_agents.scoring.catalog import Catalog
from corpus_agents.scoring.corpus import read_doc_texts
from corpus_agents.scoring.driver import model_hashes
from corpus_agents.storage import atomic_path
from corpus_agents.training.compute import FORWARD, FORWARD_BACKWARD, Compute, batch_tokens, flop_params
from corpus_agents.training.distributed import Distributed
from corpus_agents.training.reader import SelectionReader, snapshot_tokens
from corpus_agents.training.runs import (
    LogWriter,
    Record,
    ResumeRecord,
    RoundRecord,
    RunPaths,
    StepRecord,
    ensure_schema,
    record_compute,
    select_real_tokens,
    summary_line,
    token_ratio,
)
from corpus_agents.training.token_cache import token_cache_dir

RUN_FILE = "run.json"  # in a run directory: the config and agent fingerprints the run started with
#: Sections that cannot change on --resume: the checkpoint's shapes, its tokenizer, the console's state.
FIXED_ON_RESUME = ("model.", "tokenizer.", "console.", "agents.")


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """A config dict as {dotted key: leaf value} (lists are leaves)."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def config_changes(stored: dict[str, Any], given: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (stored value, given value)} of the keys whose values differ (missing = None)."""
    a, b = (
        _flat(json.loads(json.dumps(stored, default=str))),
        _flat(json.loads(json.dumps(given, default=str))),
    )
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def read_run_record(root: Path) -> dict[str, Any] | None:
    """What a run recorded when it started (None for a run made before runs recorded it)."""
    path = root / RUN_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_run_record(root: Path, config: PipelineConfig, agents: dict[str, str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    record = {"config": config.to_dict(), "agents": agents}
    with atomic_path(root / RUN_FILE) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str), encoding="utf-8")


class SelectionStream(IterableDataset):
    """The current round's training data: packed sequences of its selection snapshot (`SelectionReader`).

    Each iteration yields `{"input_ids": LongTensor[seq_len], "labels": the same ids}` from the last consumed
    position until the round's `items_per_round` sequences are out; a selection read to the end is read again
    (the next epoch, shuffled anew). So a DataLoader over the stream runs out at each round boundary, and
    iterating it again after `Selector.advance` reads the next round (the Hugging Face Trainer does so: a round
    is one of its epochs).

    Only what the trainer reports with `consumed(n)` (the next n sequences yielded, in order) counts: it is the
    position that `state_dict()` saves and the documents whose seen counts rise. Sequences read ahead and not
    consumed (a DataLoader's prefetch) are read again by the next iteration, so a checkpoint at any step resumes
    exactly where training stopped. Iterate the stream in the training process (DataLoader `num_workers=0`);
    `num_workers` here gives the reader its own worker processes (their interleaving restarts at worker 0 on
    resume, so only `num_workers=0` resumes bit for bit).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        seq_len: int,
        eos_id: int,
        seed: int,
        items_per_round: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        token_cache: str | os.PathLike | None = None,
    ):
        self.tokenizer, self.seq_len, self.eos_id, self.seed = tokenizer, seq_len, eos_id, seed
        self.token_cache = token_cache  # the readers' token cache (`SelectionReader`), None for none
        self.items_per_round, self.rank, self.world_size = items_per_round, rank, world_size
        self.num_workers = num_workers
        self.round = -1
        self.snapshot: Path | None = None
        self._epoch, self._items = 0, 0  # epoch of the consumed position, sequences consumed this round
        self._position: SelectionReader | None = None  # records the consumed position of `_epoch`
        self._pending: deque[tuple[int, torch.Tensor, np.ndarray]] = deque()  # yielded, not yet consumed
        self._consumed: list[np.ndarray] = []  # doc ids consumed this round
        self._generation = 0  # bumped by every change of source: an older iterator stops

    def _reader(self, epoch: int) -> SelectionReader:
        """The round's reader of `epoch` (each epoch of a round, and each round, is shuffled with its seed)."""
        assert self.snapshot is not None
        return SelectionReader(
            self.snapshot, self.tokenizer, seq_len=self.seq_len, eos_id=self.eos_id,
            seed=self.seed * 1_000_003 + self.round * 1_009 + epoch, rank=self.rank, world_size=self.world_size,
            token_cache=self.token_cache,
        )  # fmt: skip

    def start_round(self, round_: int, snapshot: Path) -> None:
        """Read `snapshot`, round `round_`'s selection, from its start."""
        self.round, self.snapshot = round_, Path(snapshot)
        self._epoch, self._items, self._consumed = 0, 0, []
        self._position = self._reader(0)
        self._pending.clear()
        self._generation += 1

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if get_worker_info() is not None:
            raise CorpusAgentsError(
                "iterate the selection stream in the training process (DataLoader num_workers=0); "
                "the stream's own num_workers parallelises the reader"
            )
        if self._position is None:
            raise CorpusAgentsError("the selector has no round yet: call Selector.start or resume first")
        self._pending.clear()  # read again below, from the consumed position
        generation, epoch, left = self._generation, self._epoch, self.items_per_round - self._items
        reader = self._reader(epoch)
        state = self._position.state_dict()
        resumed = bool(state["cursors"])
        reader.load_state_dict(state)
        while left > 0:
            produced = False
            # Its own generator: making the loader's iterator draws a seed, the global RNG is left alone.
            loader = DataLoader(
                reader, batch_size=None, num_workers=self.num_workers, generator=torch.Generator()
            )
            for item in loader:
                if generation != self._generation:
                    return
                produced = True
                ids = item["doc_ids"].numpy()
                self._pending.append((epoch, item["position"], ids[ids >= 0]))
                yield {"input_ids": item["input_ids"], "labels": item["input_ids"]}
                left -= 1
                if left == 0:
                    return
            if not produced and not resumed:
                raise CorpusAgentsError(
                    f"selection {self.snapshot} yields no full sequence; raise the budget"
                )
            epoch, resumed = epoch + 1, False
            reader = self._reader(epoch)

    def consumed(self, n: int) -> None:
        """The next `n` sequences yielded were trained on."""
        for _ in range(n):
            if not self._pending:
                raise CorpusAgentsError("more sequences reported consumed than the selection stream yielded")
            epoch, position, doc_ids = self._pending.popleft()
            if epoch != self._epoch:
                self._epoch, self._position = epoch, self._reader(epoch)
            assert self._position is not None
            self._position.record({"position": position})
            self._consumed.append(doc_ids)
            self._items += 1

    def take_consumed(self) -> np.ndarray:
        """The doc ids consumed since the round started (or since the last call), one per occurrence."""
        ids = np.concatenate(self._consumed) if self._consumed else np.zeros(0, np.int64)
        self._consumed = []
        return ids

    def state_dict(self) -> dict[str, Any]:
        """The consumed position: round, selection, epoch, sequences, reader cursors and the doc ids consumed."""
        if self._position is None:
            raise CorpusAgentsError("the selection stream has no round yet")
        ids = np.concatenate(self._consumed) if self._consumed else np.zeros(0, np.int64)
        return {
            "round": self.round,
            "snapshot": str(self.snapshot),
            "epoch": self._epoch,
            "items": self._items,
            "reader": self._position.state_dict(),
            "consumed": torch.from_numpy(ids.astype(np.int64)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue right after the position `state_dict()` saved."""
        self.start_round(int(state["round"]), Path(state["snapshot"]))
        self._epoch, self._items = int(state["epoch"]), int(state["items"])
        self._position = self._reader(self._epoch)
        self._position.load_state_dict(state["reader"])
        self._consumed = [state["consumed"].numpy()]


class Selector:
    """The method's selection for one training run, called by the training loop at round boundaries.

    `catalog`: the workspace catalog on rank 0 (None on the other ranks). `config`: the pipeline config; its
    `references`, `console`, `rewards`, `rounds`, `model.seq_len` (the sequence length) and `train.seed` are
    used here. `tokenizer`: the tokenizer the model trains with (it needs an EOS token). `batch_size`
    (sequences per micro-batch and rank) and `grad_accum` make a step's sequences; by default the config's.
    """

    def __init__(
        self,
        catalog: Catalog | None,
        config: PipelineConfig,
        run_id: str,
        tokenizer: Any,
        *,
        batch_size: int | None = None,
        grad_accum: int | None = None,
        dist: Distributed | None = None,
        init_from: str | None = None,
        allow_config_change: Sequence[str] = (),
        reset_agents: Sequence[str] = (),
    ):
        from corpus_agents.training.console import Console
        from corpus_agents.training.references import encode_examples, load_reference

        self.dist = dist or Distributed()
        if (catalog is not None) != self.dist.is_main:
            raise ValueError("rank 0, and only rank 0, opens the catalog")
        self.catalog, self.config, self.run_id, self.tokenizer = catalog, config, run_id, tokenizer
        self.workspace, shards = self.dist.broadcast((catalog.dir, catalog.shards()) if catalog else None)
        self.shards = {s.shard_id: s for s in shards}
        if not self.shards:
            raise CorpusAgentsError(
                f"workspace {self.workspace} has no shards; run `corpus-agents init` first"
            )
        if not config.references:
            raise CorpusAgentsError("the pipeline config lists no references: rewards need reference tasks")
        if tokenizer.eos_token_id is None:
            raise CorpusAgentsError(
                "the tokenizer has no EOS token: documents are packed with one after each"
            )
        self.paths = RunPaths.of(self.workspace, run_id)
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self.log = LogWriter(self.paths.log, run_id)
        seq_len = config.model.seq_len
        self.batch_size = batch_size or config.train.batch_size
        self.grad_accum = grad_accum or config.train.grad_accum
        self.tokens_per_step = self.batch_size * self.grad_accum * seq_len * self.dist.world_size
        self.references = [load_reference(r, self.workspace) for r in config.references]
        self.probe_batches = {
            r.name: encode_examples(tokenizer, r.probe, max_length=seq_len) for r in self.references
        }
        self.heldout_batches = {
            r.name: encode_examples(tokenizer, r.heldout, max_length=seq_len) for r in self.references
        }
        self.heldout_tokens = sum(batch_tokens(b) for b in self.heldout_batches.values())
        # Rank 0's compute accounts (training/compute.py): the work since the last round record (every
        # rank's probes, gathered) and since the start of the run (kept in the checkpoints).
        self.compute_spent, self.compute_total = Compute(), Compute()
        self.round = 0
        self.stream = SelectionStream(
            tokenizer, seq_len=seq_len, eos_id=tokenizer.eos_token_id, seed=config.train.seed,
            items_per_round=config.rounds.every * self.batch_size * self.grad_accum,
            rank=self.dist.rank, world_size=self.dist.world_size, num_workers=config.train.num_workers,
            token_cache=token_cache_dir(self.workspace),
        )  # fmt: skip
        self.allow_config_change = list(allow_config_change)
        self.reset_agents = list(reset_agents)
        self.console: Console | None = None
        self.new_run = True
        if catalog is not None:
            ensure_schema(catalog)
            hashes = model_hashes(catalog)  # model and side files hashed again only once they change
            self.agent_fingerprints = {a.name: a.fingerprint(hashes) for a in catalog.agents()}
            hashes.save()
            unknown = [a for a in self.reset_agents if a not in self.agent_fingerprints]
            if unknown:
                raise CorpusAgentsError(f"--reset-agent {unknown[0]}: no such agent in {catalog.dir}")
            self.new_run = read_run_record(self.paths.root) is None and self.paths.latest_checkpoint() is None
            if (
                not self.new_run
            ):  # before the console compares its own section: every difference, named at once
                self._check_existing_run()
            if init_from is not None and self.new_run:
                self._check_agents(RunPaths.of(self.workspace, init_from).root, f"--init-from {init_from}")
            self.console = Console(catalog, run_id, config.console)
            self.console.start(init_from=init_from)
            if init_from is not None and self.new_run:
                self._reset_memory(0)

    def dataset(self) -> SelectionStream:
        """The training data (one object for the whole run: its source follows the rounds)."""
        return self.stream

    # ----- what a run started with (rank 0) ---------------------------------------------------------
    def _check_agents(self, root: Path, what: str) -> None:
        """Refuse a run's recorded agents that changed (replaced, refitted, removed) unless they are reset."""
        record = read_run_record(root)
        if record is None:
            return  # a run from before runs recorded their agents: nothing to compare with
        changed = [
            name
            for name, fingerprint in record["agents"].items()
            if self.agent_fingerprints.get(name) != fingerprint and name not in self.reset_agents
        ]
        if changed:
            name = changed[0]
            how = "was removed" if name not in self.agent_fingerprints else "changed (replaced or refitted)"
            raise CorpusAgentsError(
                f"{what}: agent {name!r} {how} since run {root.name!r} started, so its learnt memory no longer "
                f"fits its labels; pass --reset-agent {name} to start a fresh memory for it"
            )

    def _check_existing_run(self) -> None:
        """Refuse continuing a run with another config than its own (except the keys allowed to change) or
        with changed agents (except those reset)."""
        record = read_run_record(self.paths.root)
        if record is not None:
            changes = config_changes(record["config"], self.config.to_dict())
            fixed = [k for k in self.allow_config_change if k.startswith(FIXED_ON_RESUME)]
            if fixed:
                raise CorpusAgentsError(
                    f"--allow-config-change {fixed[0]}: {', '.join(FIXED_ON_RESUME)} keys cannot change on "
                    "--resume; start a new --run (with --init-from to keep the learnt weights)"
                )
            refused = {k: v for k, v in changes.items() if k not in self.allow_config_change}
            if refused:
                listed = "; ".join(
                    f"{k}: {old!r} recorded, {new!r} given" for k, (old, new) in refused.items()
                )
                raise CorpusAgentsError(
                    f"run {self.run_id!r} was started with another config ({listed}); to --resume it with "
                    f"this change pass --allow-config-change {' '.join(refused)}, or start a new --run"
                )
            self._check_agents(self.paths.root, f"--resume {self.run_id}")

    def _reset_memory(self, round_: int) -> None:
        """A fresh memory (w = 0 for each of its current labels) for every --reset-agent, from `round_` on."""
        for agent in self.reset_agents:
            self.catalog.run("runs.sql", "reset_agent_memory", run_id=self.run_id, round=round_, agent=agent)

    # ----- the run's life ----------------------------------------------------------------------------
    def start(self, model: torch.nn.Module) -> None:
        """A new run: record what it starts with, clear its log, select round 0 (the random warm-up) and log
        the model's held-out losses (every rank calls it)."""
        if self.dist.is_main:
            if not self.new_run:
                raise CorpusAgentsError(
                    f"run {self.run_id!r} exists in {self.paths.root}; continue it with --resume or start a "
                    "new --run"
                )
            write_run_record(self.paths.root, self.config, self.agent_fingerprints)
            self.log.clear()
            self._select(0)
            self._round_log(model, 0, 0)
        self.round = 0
        self.release_catalog()
        self.dist.barrier()  # the round's selection is on disk
        self.stream.start_round(0, self.paths.selection(0))

    def resume(self, state: dict[str, Any], step: int, checkpoint: str) -> None:
        """Continue from `state_dict()` output saved at `step` in checkpoint `checkpoint` (every rank)."""
        if self.dist.is_main:
            record = read_run_record(self.paths.root)  # None for a run from before runs recorded it
            agents = dict(record["agents"]) if record else dict(self.agent_fingerprints)
            agents.update({a: self.agent_fingerprints[a] for a in self.reset_agents})
            write_run_record(self.paths.root, self.config, agents)  # checked when the selector was made
        self.load_state_dict(state)
        if self.dist.is_main:
            self._reset_memory(self.round)
        self.log_record(ResumeRecord(step=step, round=self.round, checkpoint=checkpoint))
        self.release_catalog()

    def due(self, step: int) -> bool:
        """Whether a round ends after `step` steps (call `advance` before training further)."""
        every = self.config.rounds.every
        return step > 0 and step % every == 0 and step // every > self.round

    def advance(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        """End the round after `step` steps: count what it consumed, measure the next round's probe rewards
        on `model` (`optimizer` for the one_step estimator), update the console, select and log the round;
        the stream then reads the new selection (every rank calls it)."""
        self._record_consumed()
        self.round += 1
        rewards = self.probe_rewards(model, optimizer, self.round)
        if self.console is not None:  # rank 0
            self.console.update(self.round, rewards)
            self._select(self.round)
            self._round_log(model, step, self.round)
        self.release_catalog()
        self.dist.barrier()  # the round's selection is on disk
        self.stream.start_round(self.round, self.paths.selection(self.round))

    def release_catalog(self) -> None:
        """Close the catalog's DuckDB connection (rank 0) until the selector's next work reopens it, so that
        `query`, `status`, `runs` and `report` can read it while the model trains (the workspace stays
        locked)."""
        if self.catalog is not None:
            self.catalog.release()

    def consumed(self, n: int) -> None:
        """The next `n` sequences of the stream were trained on (call it after each micro-batch)."""
        self.stream.consumed(n)

    def finish(self, model: torch.nn.Module, step: int) -> dict[str, Any]:
        """The end of training after `step` steps: count the last round's consumption and log the final
        record; returns the record logged on rank 0 ({} elsewhere)."""
        self._record_consumed()
        if self.console is None:
            return {}
        return self._round_log(model, step, self.round, event="final")

    # ----- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The round, the run's compute so far and every rank's stream position (all ranks call it; rank 0
        gets the whole state, the others {}). Save it with the model's checkpoint."""
        streams = self.dist.gather(self.stream.state_dict())
        if not self.dist.is_main:
            return {}
        return {"round": self.round, "compute": self.compute_total.to_dict(), "streams": streams}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()` output (every rank loads the same state). `streams` None: at the start
        of the round (a checkpoint from before checkpoints kept the stream position)."""
        self.round = int(state["round"])
        self.compute_total = Compute.from_dict(state.get("compute", {}))
        streams = state.get("streams")
        if streams is None:
            self.stream.start_round(self.round, self.paths.selection(self.round))
            return
        if len(streams) != self.dist.world_size:
            raise CorpusAgentsError(
                f"the checkpoint was written by {len(streams)} ranks, this run has {self.dist.world_size}: "
                "resume with as many"
            )
        self.stream.load_state_dict(streams[self.dist.rank])

    # ----- rounds ----------------------------------------------------------------------------------
    def heldout_losses(self, model: torch.nn.Module) -> dict[str, float]:
        from corpus_agents.training.references import reference_loss

        return {name: reference_loss(model, batches) for name, batches in self.heldout_batches.items()}

    def probe_rewards(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, round_: int
    ) -> dict[int, float]:
        """Rewards of the round's probe documents, standardised per task and averaged
        (docs/algorithm.md#standardisation).

        Rank 0 draws the probes; each rank rewards a contiguous share of them and rank 0, which alone
        returns the rewards (the other ranks get {}), standardises them over all the probes.
        """
        from corpus_agents.training.rewards import standardize

        doc_ids = None
        if self.console is not None:  # rank 0; random selection ignores the rewards, so none are measured
            random_mode = self.console.config.mode == "random"
            probes = None if random_mode else self.console.draw_probes(round_)
            doc_ids = np.asarray([] if probes is None else probes["doc_id"].to_numpy(), dtype=np.int64)
            self.release_catalog()  # readers may look while the probes are rewarded
        doc_ids = self.dist.broadcast(doc_ids)
        if len(doc_ids) == 0:
            return {}
        share = np.array_split(doc_ids, self.dist.world_size)[self.dist.rank]
        spent = Compute()
        gathered = self.dist.gather((self._raw_rewards(model, optimizer, share, spent), spent))
        if not self.dist.is_main:
            return {}
        self.compute_spent = sum((rank_spent for _, rank_spent in gathered), self.compute_spent)
        raw = np.concatenate([rewards for rewards, _ in gathered])
        return dict(zip(doc_ids.tolist(), standardize(raw).tolist()))

    def _raw_rewards(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, doc_ids: np.ndarray, compute: Compute
    ) -> np.ndarray:
        """[n_docs, n_tasks] rewards of the given documents by the configured `rewards.method`; their work
        is counted in `compute`."""
        from corpus_agents.training.rewards import encode_documents, gradient_rewards, one_step_rewards

        texts = read_doc_texts(self.shards, doc_ids)
        cfg = self.config.rewards
        docs = encode_documents(self.tokenizer, texts, max_length=cfg.max_tokens)
        if cfg.method == "gradient":
            return gradient_rewards(
                model, self.probe_batches, docs, cosine=cfg.cosine, projection_dim=cfg.projection_dim,
                seed=self.config.train.seed, chunk_size=cfg.chunk_size, compute=compute,
            )  # fmt: skip
        return one_step_rewards(model, optimizer, docs, self.probe_batches, compute=compute)  # one_step

    def _select(self, round_: int) -> Path:
        """The round's selection snapshot, for every rank's tokens (rank 0 only).

        The budget, U * tokens per step * oversample, is in real tokens as the stream reads them (each
        document's tokens under the run's tokenizer plus its EOS; `runs.select_real_tokens`): the console,
        which counts the catalog's estimate, is given it over the real/estimated ratio of every document of
        the previous round's selection, counted through the token cache that the stream filled with them;
        round 0 measures a first selection by the estimate and selects again. The ratio depends only on the
        selections, never on what the cache happened to hold, so a resumed run selects the same documents."""
        budget = int(self.config.rounds.every * self.tokens_per_step * self.config.rounds.oversample)
        mode = "random" if round_ == 0 else None  # round 0 is the random warm-up
        ratio = None
        if round_ > 0:
            previous = self._real_tokens(self.paths.selection(round_ - 1))
            ratio = token_ratio(self.catalog, self.run_id, round_ - 1, previous)
        path = self.paths.selection(round_)
        return select_real_tokens(
            self.console, round_, budget, path, self._real_tokens, mode=mode, ratio=ratio
        )

    def _real_tokens(self, snapshot: Path) -> int:
        """Tokens of every document of `snapshot` as the stream reads them, through the token cache."""
        return snapshot_tokens(snapshot, self.tokenizer, token_cache_dir(self.workspace))

    def _record_consumed(self) -> None:
        """Add the round's consumed doc ids of every rank to the seen counts (on rank 0), once per round."""
        ids = self.dist.gather(self.stream.take_consumed())
        if self.console is not None:
            self.console.record_consumed(np.concatenate(ids), round=self.round)

    def _round_log(
        self, model: torch.nn.Module, step: int, round_: int, event: str = "round"
    ) -> dict[str, Any]:
        """Record the held-out losses and the compute spent, and log them with the console state (rank 0
        only)."""
        losses = self.heldout_losses(model)
        state = self.console.state(round_)
        tokens = step * self.tokens_per_step
        spent, self.compute_spent = self.compute_spent, Compute()
        n_params = flop_params(model)
        spent.add("train", tokens - self.compute_total.train_tokens, FORWARD_BACKWARD * n_params)
        spent.add("eval", self.heldout_tokens, FORWARD * n_params)
        self.compute_total = self.compute_total + spent
        record_compute(self.catalog, self.run_id, round_, step, spent, self.compute_total)
        for task, loss in losses.items():
            self.catalog.run(
                "runs.sql", "record_metric", run_id=self.run_id, round=round_, step=step, tokens=tokens,
                task=task, loss=loss,
            )  # fmt: skip
        record = RoundRecord.measured(
            event, step, round_, tokens, losses, state.theta, state.w, spent, self.compute_total
        )
        return self.log_record(record)

    def log_step(
        self, step: int, loss: float, lr: float, tokens_per_s: int, round_: int | None = None
    ) -> dict[str, Any]:
        """Log a training step of round `round_` (default: the current round) (rank 0 only)."""
        record = StepRecord(
            step=step,
            round=self.round if round_ is None else round_,
            loss=round(loss, 5),
            lr=lr,
            tokens=step * self.tokens_per_step,
            tokens_per_s=tokens_per_s,
        )
        return self.log_record(record)

    def log_record(self, record: Record) -> dict[str, Any]:
        """Append a record to the run's log.jsonl and print a one-line summary of it (rank 0 only); returns
        the object logged."""
        if not self.dist.is_main:
            return {}
        written = self.log.write(record)
        print(summary_line(self.run_id, record), flush=True)
        return written


__all__ = [
    "FIXED_ON_RESUME",
    "RUN_FILE",
    "SelectionStream",
    "Selector",
    "config_changes",
    "read_run_record",
    "write_run_record",
]
