"""The selection-driven training loop (docs/algorithm.md#rounds): train, probe, reward, re-weight, re-select.

The rounds are the `Selector`'s (training/selector.py), the same object any other training loop uses: the
process that trains owns the workspace catalog (the console's state lives there), and every `rounds.every`
steps the selector draws probe documents, measures their rewards on the live model, updates the agents'
memory and the collaboration weights and writes the next selection, which its stream reads.

A checkpoint is written at every round boundary (after the round's selection), every
`train.checkpoint_every` steps and at the end. It holds the model, optimiser, scheduler, RNG and the
selector's state, the stream position included, so `--resume` after a crash continues at the checkpoint's
step, mid-round too, and reaches the same result as an uninterrupted run. A changed config is refused on
`--resume` unless its keys are named, and then they apply everywhere, the LR schedule included.

Under `torchrun` the model is wrapped in `DistributedDataParallel`; rank 0 alone opens the catalog and
writes the checkpoints, and every rank reads its own slice of each selection.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from corpus_agents.config import PipelineConfig
from corpus_agents.errors import CorpusAgentsError
from corpus_agents.scoring.catalog import Catalog
from corpus_agents.scoring.corpus import sample_texts
from corpus_agents.storage import atomic_path
from corpus_agents.training.distributed import Distributed
from corpus_agents.training.models import build_model, load_tokenizer, train_tokenizer
from corpus_agents.training.runs import STATE_FILE, RunPaths
from corpus_agents.training.selector import Selector


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
        self.dist = dist or Distributed()
        if (catalog is not None) != self.dist.is_main:
            raise ValueError("rank 0, and only rank 0, opens the catalog")
        self.catalog = catalog
        self.config = config
        self.run_id = run_id
        self.workspace = self.dist.broadcast(catalog.dir if catalog else None)
        self.paths = RunPaths.of(self.workspace, run_id)
        self.device = _device(config)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if self.dist.is_main:
            if not catalog.shards():
                raise CorpusAgentsError(
                    f"workspace {self.workspace} has no shards; run `corpus-agents init` first"
                )
            self.tokenizer = self._tokenizer()
        self.dist.barrier()  # the other ranks load the tokenizer that rank 0 trained and saved
        if not self.dist.is_main:
            self.tokenizer = self._tokenizer()
        self.selector = Selector(
            catalog, config, run_id, self.tokenizer, dist=self.dist, init_from=init_from,
            allow_config_change=allow_config_change, reset_agents=reset_agents,
        )  # fmt: skip
        self.tokens_per_step = self.selector.tokens_per_step

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
    def save_checkpoint(self, model: Any, optimizer: Any, scheduler: Any, step: int) -> Path | None:
        """Model (`save_pretrained`), optimiser, scheduler, RNG state, step and the selector's state (the
        stream position of every rank); atomic rename. Every rank calls it; rank 0 writes and returns the
        path."""
        from transformers.utils import logging as hf_logging

        selector = self.selector.state_dict()  # gathers every rank's stream position
        if not self.dist.is_main:
            return None
        hf_logging.disable_progress_bar()  # a bar per checkpoint drowns the training log
        final = self.paths.checkpoint(step)
        with atomic_path(final) as tmp:
            model.save_pretrained(tmp / "model")
            self.tokenizer.save_pretrained(tmp / "model")
            state = {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng_torch": torch.get_rng_state(),  # data order, probes and selections are seeded explicitly
                "selector": selector,
            }
            torch.save(state, tmp / STATE_FILE)
        for old in sorted(self.paths.checkpoints.glob("step-*"))[:-2]:  # keep the last two
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(
        self, path: Path, model: Any, optimizer: Any, scheduler: Any
    ) -> tuple[int, dict[str, Any]]:
        """Load a checkpoint into the model, optimiser and scheduler; (its step, the selector's state)."""
        from safetensors.torch import load_file

        model.load_state_dict(load_file(path / "model" / "model.safetensors"), strict=False)
        if getattr(model.config, "tie_word_embeddings", False):
            model.tie_weights()
        state = torch.load(path / STATE_FILE, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_torch"])
        # A checkpoint from before checkpoints kept the selector's state is at the start of its round.
        selector = state.get("selector") or {"round": state["round"], "compute": state.get("compute", {})}
        return int(state["step"]), selector

    # ----- the loop --------------------------------------------------------------------------------
    def train(self, resume: bool = False) -> dict[str, Any]:
        """Run (or, with `resume`, continue) to `train.steps`; the final round record, on every rank."""
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data import DataLoader

        cfg = self.config
        main = self.dist.is_main
        selector = self.selector
        torch.manual_seed(cfg.train.seed)
        model, optimizer, scheduler = self._model_and_optimizer()
        step = 0
        checkpoint = self.paths.latest_checkpoint() if resume and main else None
        checkpoint = self.dist.broadcast(checkpoint)
        if checkpoint is not None:
            step, state = self.load_checkpoint(checkpoint, model, optimizer, scheduler)
            self._apply_schedule(optimizer, scheduler)
            selector.resume(state, step, checkpoint.name)
        else:
            selector.start(model)
            self.save_checkpoint(model, optimizer, scheduler, step)
        # `net` trains (it all-reduces the gradients under torchrun); probes, evaluation and checkpoints
        # use the bare `model`.
        net = model
        if self.dist.enabled:
            device_ids = [self.device] if self.device.type == "cuda" else None
            net = DistributedDataParallel(model, device_ids=device_ids)
        model.train()
        # Its own generator: each iterator draws a seed from it, not from the global RNG.
        loader = DataLoader(selector.dataset(), batch_size=cfg.train.batch_size, generator=torch.Generator())
        data = iter(loader)
        every = cfg.train.checkpoint_every
        started, tokens_since, last_log = time.perf_counter(), 0, time.perf_counter()
        while step < cfg.train.steps:
            if selector.due(step):
                selector.advance(model, optimizer, step)
                self.save_checkpoint(model, optimizer, scheduler, step)
                data = iter(loader)  # the new round's selection
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
                selector.consumed(len(input_ids))
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_since += self.tokens_per_step
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                now = time.perf_counter()
                speed = round(tokens_since / max(now - last_log, 1e-9))
                selector.log_step(step, loss_sum, scheduler.get_last_lr()[0], speed)
                tokens_since, last_log = 0, now
            if every and step % every == 0 and step < cfg.train.steps and not selector.due(step):
                self.save_checkpoint(model, optimizer, scheduler, step)  # mid-round: the stream position too
        final = selector.finish(model, step)
        self.save_checkpoint(model, optimizer, scheduler, step)
        if main:
            final["seconds"] = round(time.perf_counter() - started, 1)
        return self.dist.broadcast(final)
