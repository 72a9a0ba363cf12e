"""The selection-driven training loop (docs/algorithm.md#rounds): train, probe, reward, re-weight, re-select.

The process that trains owns the workspace catalog (the console's state lives there). Every `rounds.every`
steps a round draws probe documents, measures their rewards on the live model, updates the agents' memory
and the collaboration weights, and writes the next selection snapshot, which the streaming reader reads.
A checkpoint is written at every round boundary, after the round's selection, so `--resume` after a
crash restarts at the start of a round and reaches the same result as an uninterrupted run.

A run records what it started with in WS/runs/<run_id>/run.json: the whole config and each agent's
fingerprint. `--resume` refuses a different config (unless the changed keys are named, and then they apply
everywhere, the LR schedule included) and a changed agent (unless its memory is reset); `--init-from`
refuses a source run whose agents have changed since.

Under `torchrun` the model is wrapped in `DistributedDataParallel` and rank 0 alone opens the catalog and
runs the console: it draws the probes and broadcasts their doc ids, every rank rewards its share of them
and rank 0 gathers the rewards, updates the console, writes the selection snapshot and the checkpoint
while the others wait at a barrier. Every rank then reads its own slice of the snapshot, and rank 0
gathers the consumed doc ids for the seen counts.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corpus_agents.config import PipelineConfig
from corpus_agents.errors import CorpusAgentsError
from corpus_agents.scoring.catalog import Catalog
from corpus_agents.scoring.corpus import read_doc_texts, sample_texts
from corpus_agents.storage import atomic_path
from corpus_agents.training.compute import FORWARD, FORWARD_BACKWARD, Compute, batch_tokens, flop_params
from corpus_agents.training.distributed import Distributed
from corpus_agents.training.models import build_model, load_tokenizer, train_tokenizer
from corpus_agents.training.runs import (
    STATE_FILE,
    LogWriter,
    Record,
    ResumeRecord,
    RoundRecord,
    RunPaths,
    StepRecord,
    ensure_schema,
    record_compute,
    summary_line,
)


def lr_lambda(config: PipelineConfig) -> Any:
    """Linear warm-up then cosine (or warmup-stable-decay) to `min_lr_ratio` of the peak rate."""
    t = config.train
    floor = t.min_lr_ratio

    def factor(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        if t.schedule == "wsd":
            decay_start = int(t.steps * (1 - t.wsd_decay_fraction))
            if step < decay_start:
                return 1.0
            progress = (step - decay_start) / max(1, t.steps - decay_start)
            return 1.0 - (1.0 - floor) * progress
        progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


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


def _device(config: PipelineConfig) -> torch.device:
    wanted = config.train.device
    if wanted == "cuda" and not torch.cuda.is_available():
        raise CorpusAgentsError("train.device is cuda but no CUDA device is available")
    return torch.device("cuda" if wanted in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def start_distributed(config: PipelineConfig) -> Distributed:
    """Join `torchrun`'s process group with the backend of the configured device (a no-op without it)."""
    return Distributed.from_env(cuda=_device(config).type == "cuda")


def _autocast(device: torch.device, dtype: str) -> Any:
    use_bf16 = dtype == "bf16" or (dtype == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


class Trainer:
    """One training run of the method (or an ablation) on a workspace's scored corpus.

    Under `torchrun`, pass `dist` (see `start_distributed`) and the catalog on rank 0 only (None elsewhere).
    """

    def __init__(
        self,
        catalog: Catalog | None,
        config: PipelineConfig,
        run_id: str,
        *,
        init_from: str | None = None,
        dist: Distributed | None = None,
        allow_config_change: Sequence[str] = (),
        reset_agents: Sequence[str] = (),
    ):
        from corpus_agents.training.console import Console
        from corpus_agents.training.references import encode_examples, load_reference

        self.dist = dist or Distributed()
        if (catalog is not None) != self.dist.is_main:
            raise ValueError("rank 0, and only rank 0, opens the catalog")
        self.catalog = catalog
        self.config = config
        self.run_id = run_id
        self.workspace, shards = self.dist.broadcast((catalog.dir, catalog.shards()) if catalog else None)
        self.paths = RunPaths.of(self.workspace, run_id)
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self.log = LogWriter(self.paths.log, run_id)
        self.device = _device(config)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.shards = {s.shard_id: s for s in shards}
        if not self.shards:
            raise CorpusAgentsError(
                f"workspace {self.workspace} has no shards; run `corpus-agents init` first"
            )
        if not config.references:
            raise CorpusAgentsError("the pipeline config lists no references: rewards need reference tasks")
        if self.dist.is_main:
            self.tokenizer = self._tokenizer()
        self.dist.barrier()  # the other ranks load the tokenizer that rank 0 trained and saved
        if not self.dist.is_main:
            self.tokenizer = self._tokenizer()
        self.eos_id = self.tokenizer.eos_token_id
        seq_len = config.model.seq_len
        self.references = [load_reference(r, self.workspace) for r in config.references]
        self.probe_batches = {
            r.name: encode_examples(self.tokenizer, r.probe, max_length=seq_len) for r in self.references
        }
        self.heldout_batches = {
            r.name: encode_examples(self.tokenizer, r.heldout, max_length=seq_len) for r in self.references
        }
        self.heldout_tokens = sum(batch_tokens(b) for b in self.heldout_batches.values())
        # Rank 0's compute accounts (training/compute.py): the work since the last round record (every
        # rank's probes, gathered) and since the start of the run (kept in the checkpoints).
        self.compute_spent, self.compute_total = Compute(), Compute()
        self.allow_config_change = list(allow_config_change)
        self.reset_agents = list(reset_agents)
        self.console: Console | None = None
        if catalog is not None:
            ensure_schema(catalog)
            self.agent_fingerprints = {a.name: a.fingerprint() for a in catalog.agents()}
            unknown = [a for a in self.reset_agents if a not in self.agent_fingerprints]
            if unknown:
                raise CorpusAgentsError(f"--reset-agent {unknown[0]}: no such agent in {catalog.dir}")
            new_run = read_run_record(self.paths.root) is None and self.paths.latest_checkpoint() is None
            if not new_run:  # before the console compares its own section: every difference, named at once
                self._check_existing_run()
            if init_from is not None and new_run:
                self._check_agents(RunPaths.of(self.workspace, init_from).root, f"--init-from {init_from}")
            self.console = Console(catalog, run_id, config.console)
            self.console.start(init_from=init_from)
            if init_from is not None and new_run:
                self._reset_memory(0)
        tokens_per_rank = config.train.batch_size * config.train.grad_accum * seq_len
        self.tokens_per_step = tokens_per_rank * self.dist.world_size

    # ----- setup -----------------------------------------------------------------------------------
    def _tokenizer(self) -> Any:
        cfg = self.config.tokenizer
        if cfg.path:
            return load_tokenizer(cfg.path)
        if (self.paths.tokenizer / "tokenizer.json").is_file():
            return load_tokenizer(str(self.paths.tokenizer))
        texts = sample_texts(self.catalog, cfg.sample_docs, seed=self.config.train.seed)
        return train_tokenizer(texts, cfg.vocab_size, self.paths.tokenizer)

    def _model_and_optimizer(self) -> tuple[Any, torch.optim.Optimizer, Any]:
        cfg = self.config
        model = build_model(
            cfg.model.preset, len(self.tokenizer), cfg.model.seq_len, cfg.train.seed, **cfg.model.overrides
        ).to(self.device)
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.train.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.train.lr,
            betas=(cfg.train.beta1, cfg.train.beta2),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
        return model, optimizer, scheduler

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

    def _record_resume(self) -> None:
        """Record the config the run continues with, and the fingerprints of the agents reset."""
        record = read_run_record(self.paths.root)  # None for a run from before runs recorded it
        agents = dict(record["agents"]) if record else dict(self.agent_fingerprints)
        agents.update({a: self.agent_fingerprints[a] for a in self.reset_agents})
        write_run_record(self.paths.root, self.config, agents)

    def _reset_memory(self, round_: int) -> None:
        """A fresh memory (w = 0 for each of its current labels) for every --reset-agent, from `round_` on."""
        for agent in self.reset_agents:
            self.catalog.run("runs.sql", "reset_agent_memory", run_id=self.run_id, round=round_, agent=agent)

    def _apply_schedule(self, optimizer: Any, scheduler: Any) -> None:
        """After a checkpoint loads: the current config's peak LR, schedule, decay and betas at the loaded step
        (the saved scheduler and optimiser state would otherwise keep the old ones)."""
        cfg = self.config.train
        scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
        factor = lr_lambda(self.config)
        scheduler.lr_lambdas = [factor for _ in optimizer.param_groups]
        for group, decay in zip(optimizer.param_groups, (cfg.weight_decay, 0.0)):
            group.update(initial_lr=cfg.lr, weight_decay=decay, betas=(cfg.beta1, cfg.beta2))
            group["lr"] = cfg.lr * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]

    # ----- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self, model: Any, optimizer: Any, scheduler: Any, step: int, round_: int) -> Path:
        """Model (`save_pretrained`), optimiser, scheduler, RNG states, step and round; atomic rename."""
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per checkpoint drowns the training log
        final = self.paths.checkpoint(step)
        with atomic_path(final) as tmp:
            model.save_pretrained(tmp / "model")
            self.tokenizer.save_pretrained(tmp / "model")
            state = {
                "step": step,
                "round": round_,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng_torch": torch.get_rng_state(),  # data order, probes and selections are seeded explicitly
                "compute": self.compute_total.to_dict(),
            }
            torch.save(state, tmp / STATE_FILE)
        for old in sorted(self.paths.checkpoints.glob("step-*"))[:-2]:  # keep the last two
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, path: Path, model: Any, optimizer: Any, scheduler: Any) -> tuple[int, int]:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(path / "model" / "model.safetensors"), strict=False)
        if getattr(model.config, "tie_word_embeddings", False):
            model.tie_weights()
        state = torch.load(path / STATE_FILE, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_torch"])
        self.compute_total = Compute.from_dict(state.get("compute", {}))
        return int(state["step"]), int(state["round"])

    # ----- rounds ----------------------------------------------------------------------------------
    def heldout_losses(self, model: Any) -> dict[str, float]:
        from corpus_agents.training.references import reference_loss

        was_training = model.training
        model.eval()
        losses = {name: reference_loss(model, batches) for name, batches in self.heldout_batches.items()}
        model.train(was_training)
        return losses

    def probe_rewards(self, model: Any, optimizer: Any, round_: int) -> dict[int, float]:
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
            self._release_catalog()  # readers may look while the probes are rewarded
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

    def _raw_rewards(self, model: Any, optimizer: Any, doc_ids: np.ndarray, compute: Compute) -> np.ndarray:
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

    def select(self, round_: int) -> Path:
        """The round's selection snapshot, for every rank's tokens (rank 0 only)."""
        budget = int(self.config.rounds.every * self.tokens_per_step * self.config.rounds.oversample)
        mode = "random" if round_ == 0 else None  # round 0 is the random warm-up
        return self.console.select(round_, budget, self.paths.selection(round_), mode=mode)

    def batches(self, selection: Path, round_: int) -> Iterator[dict[str, torch.Tensor]]:
        """Micro-batches from a selection; a selection read to the end is read again (next epoch)."""
        from torch.utils.data import DataLoader

        from corpus_agents.training.reader import SelectionReader

        epoch = 0
        while True:
            reader = SelectionReader(
                selection, self.tokenizer, seq_len=self.config.model.seq_len, eos_id=self.eos_id,
                seed=self.config.train.seed * 1_000_003 + round_ * 1_009 + epoch,
                rank=self.dist.rank, world_size=self.dist.world_size,
            )  # fmt: skip
            loader = DataLoader(reader, batch_size=self.config.train.batch_size,
                                num_workers=self.config.train.num_workers)  # fmt: skip
            produced = False
            for batch in loader:
                produced = True
                yield batch
            if not produced:
                raise CorpusAgentsError(f"selection {selection} yields no full sequence; raise the budget")
            epoch += 1

    # ----- the loop --------------------------------------------------------------------------------
    def train(self, resume: bool = False) -> dict[str, Any]:
        """Run (or, with `resume`, continue) to `train.steps`; the final round record, on every rank."""
        from torch.nn.parallel import DistributedDataParallel

        cfg = self.config
        main = self.dist.is_main
        torch.manual_seed(cfg.train.seed)
        model, optimizer, scheduler = self._model_and_optimizer()
        step, round_ = 0, 0
        if main and not resume and self.paths.latest_checkpoint() is not None:
            raise CorpusAgentsError(
                f"run {self.run_id!r} exists in {self.paths.root}; continue it with --resume or start a new --run"
            )
        checkpoint = self.paths.latest_checkpoint() if resume and main else None
        if checkpoint is not None:
            self._record_resume()  # checked when the trainer was made
        checkpoint = self.dist.broadcast(checkpoint)
        if checkpoint is not None:
            step, round_ = self.load_checkpoint(checkpoint, model, optimizer, scheduler)
            self._apply_schedule(optimizer, scheduler)
            if main:
                self._reset_memory(round_)
            self._log(ResumeRecord(step=step, round=round_, checkpoint=checkpoint.name))
        elif main:
            write_run_record(self.paths.root, self.config, self.agent_fingerprints)
            self.log.clear()
            self.select(0)
            self._round_log(model, step, 0)
            self.save_checkpoint(model, optimizer, scheduler, step, 0)
        self._release_catalog()  # readers may look while the round trains
        self.dist.barrier()  # the round's selection is on disk
        # `net` trains (it all-reduces the gradients under torchrun); probes, evaluation and checkpoints
        # use the bare `model`.
        net = model
        if self.dist.enabled:
            device_ids = [self.device] if self.device.type == "cuda" else None
            net = DistributedDataParallel(model, device_ids=device_ids)
        model.train()
        data = self.batches(self.paths.selection(round_), round_)
        consumed: list[np.ndarray] = []
        started, tokens_since, last_log = time.perf_counter(), 0, time.perf_counter()
        while step < cfg.train.steps:
            if step > 0 and step % cfg.rounds.every == 0 and step // cfg.rounds.every > round_:
                self._record_consumed(consumed, round_)
                consumed = []
                round_ += 1
                rewards = self.probe_rewards(model, optimizer, round_)
                if self.console is not None:  # rank 0
                    self.console.update(round_, rewards)
                    self.select(round_)
                    self._round_log(model, step, round_)
                    self.save_checkpoint(model, optimizer, scheduler, step, round_)
                    self._release_catalog()
                self.dist.barrier()  # the round's selection is on disk
                data = self.batches(self.paths.selection(round_), round_)
            loss_sum = 0.0
            for micro in range(cfg.train.grad_accum):
                batch = next(data)
                input_ids = batch["input_ids"].to(self.device)
                last = micro == cfg.train.grad_accum - 1  # DDP all-reduces on the last micro-batch only
                with net.no_sync() if self.dist.enabled and not last else nullcontext():
                    with _autocast(self.device, cfg.train.dtype):
                        loss = net(input_ids=input_ids, labels=input_ids).loss / cfg.train.grad_accum
                    loss.backward()
                loss_sum += loss.item()
                ids = batch["doc_ids"].numpy().ravel()
                consumed.append(ids[ids >= 0])
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_since += self.tokens_per_step
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                now = time.perf_counter()
                self._log(StepRecord(step=step, round=round_, loss=round(loss_sum, 5),
                                     lr=scheduler.get_last_lr()[0], tokens=step * self.tokens_per_step,
                                     tokens_per_s=round(tokens_since / max(now - last_log, 1e-9))))  # fmt: skip
                tokens_since, last_log = 0, now
        self._record_consumed(consumed, round_)
        final: dict[str, Any] = {}
        if main:
            final = self._round_log(model, step, round_, event="final")
            self.save_checkpoint(model, optimizer, scheduler, step, round_)
            final["seconds"] = round(time.perf_counter() - started, 1)
        return self.dist.broadcast(final)

    def _release_catalog(self) -> None:
        """Close the catalog's DuckDB connection (rank 0) until the next round's work reopens it, so that
        `query`, `status`, `runs` and `report` can read it while this run trains (the workspace stays locked)."""
        if self.catalog is not None:
            self.catalog.release()

    def _record_consumed(self, consumed: list[np.ndarray], round_: int) -> None:
        """Add the round's consumed doc ids of every rank to the seen counts (on rank 0)."""
        ids = self.dist.gather(np.concatenate(consumed) if consumed else np.array([], np.int64))
        if self.console is not None:
            self.console.record_consumed(np.concatenate(ids), round=round_)

    def _round_log(self, model: Any, step: int, round_: int, event: str = "round") -> dict[str, Any]:
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
                "runs.sql",
                "record_metric",
                run_id=self.run_id,
                round=round_,
                step=step,
                tokens=tokens,
                task=task,
                loss=loss,
            )
        record = RoundRecord.measured(
            event, step, round_, tokens, losses, state.theta, state.w, spent, self.compute_total
        )
        return self._log(record)

    def _log(self, record: Record) -> dict[str, Any]:
        """Append a record to the run's log.jsonl and print a one-line summary of it (rank 0 only); returns
        the object logged."""
        if not self.dist.is_main:
            return {}
        written = self.log.write(record)
        print(summary_line(self.run_id, record), flush=True)
        return written
