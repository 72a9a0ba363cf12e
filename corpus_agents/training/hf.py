"""The method inside a Hugging Face `transformers.Trainer`: a `TrainerCallback` built on the `Selector`.

    selector = Selector(catalog, config, "hf-run", tokenizer, batch_size=8, grad_accum=1)
    args = TrainingArguments(out, max_steps=3000, per_device_train_batch_size=8, ignore_data_skip=True,
                             dataloader_num_workers=0, save_steps=500)
    trainer = Trainer(model=model, args=args, train_dataset=selector.dataset(),
                      callbacks=[SelectionCallback(selector)])
    trainer.train()            # later, after a crash: trainer.train(resume_from_checkpoint=True)

How it fits the Trainer's loop. `selector.dataset()` is an `IterableDataset` that yields the current round's
sequences and runs out at the round's end (`rounds.every` steps of `per_device_train_batch_size *
gradient_accumulation_steps` sequences), so each round is one of the Trainer's epochs: at the last step of a
round, `on_step_end` measures the probe rewards on the Trainer's model, updates the console and selects the
next round, and the next epoch's iterator reads the new selection. `on_step_end` also reports each step's
sequences as consumed: only those count, so a checkpoint taken at any step (`on_save` writes the selector's
state into the checkpoint folder) resumes exactly where training stopped, prefetched batches included.

Requirements, checked when training begins: `max_steps` set; `ignore_data_skip=True` (the stream resumes
itself; the Trainer would otherwise skip batches again); `dataloader_num_workers=0` (the stream's own reader
can use `train.num_workers` processes); the batch size and gradient accumulation the selector was made with;
one process (the callback does not run under torchrun / accelerate launch); checkpoint folders named as the
Trainer names them (`checkpoint-<step>` in `output_dir`). Train on labels = input_ids (the stream gives both).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from corpus_agents.errors import CorpusAgentsError, require
from corpus_agents.storage import atomic_path
from corpus_agents.training.selector import Selector

SELECTOR_FILE = "selector.pt"  # in a Trainer checkpoint folder: the selector's state_dict()


class SelectionCallback(TrainerCallback):
    """Runs a `Selector`'s rounds inside a `transformers.Trainer` (see the module's doc for the setup)."""

    def __init__(self, selector: Selector):
        require("accelerate", "a transformers.Trainer", extra="hf-trainer")
        self.selector = selector
        self._last_log = time.perf_counter()
        self._logged_step = 0
        self._trained_round = 0

    def _check(self, args: TrainingArguments) -> None:
        sel = self.selector
        wrong = []
        if args.max_steps is None or args.max_steps <= 0:
            wrong.append("max_steps must be set (the selection stream has no length)")
        if not args.ignore_data_skip:
            wrong.append("ignore_data_skip must be True (the selection stream resumes itself)")
        if args.dataloader_num_workers != 0:
            wrong.append("dataloader_num_workers must be 0 (set train.num_workers for the reader instead)")
        if args.per_device_train_batch_size != sel.batch_size:
            wrong.append(
                f"per_device_train_batch_size is {args.per_device_train_batch_size}, the selector's "
                f"batch_size {sel.batch_size}"
            )
        if args.gradient_accumulation_steps != sel.grad_accum:
            wrong.append(
                f"gradient_accumulation_steps is {args.gradient_accumulation_steps}, the selector's "
                f"grad_accum {sel.grad_accum}"
            )
        if args.world_size != 1:
            wrong.append(f"one process only (world_size is {args.world_size})")
        if wrong:
            raise CorpusAgentsError(f"SelectionCallback: {'; '.join(wrong)}")

    @staticmethod
    def _checkpoint(args: TrainingArguments, state: TrainerState) -> Path:
        return Path(args.output_dir) / f"checkpoint-{state.global_step}"

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """A new run starts its round 0; a resumed one (global_step > 0) loads the checkpoint's selector state."""
        self._check(args)
        model = kwargs["model"]
        if state.global_step == 0:
            self.selector.start(model)
        else:
            folder = self._checkpoint(args, state)
            path = folder / SELECTOR_FILE
            if not path.is_file():
                raise CorpusAgentsError(
                    f"resuming at step {state.global_step}: {path} is missing (resume from a checkpoint that "
                    "a SelectionCallback saved)"
                )
            self.selector.resume(torch.load(path, weights_only=True), state.global_step, folder.name)
        self._last_log, self._logged_step = time.perf_counter(), state.global_step

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Count the step's sequences as consumed; at a round boundary, run the round on the live model."""
        sel = self.selector
        sel.consumed(args.per_device_train_batch_size * args.gradient_accumulation_steps)
        self._trained_round = sel.round  # the step's log record names the round it trained in
        if sel.due(state.global_step) and state.global_step < state.max_steps:
            # The torch optimizer inside accelerate's wrapper (one_step rewards step and restore it).
            optimizer = kwargs.get("optimizer")
            optimizer = getattr(optimizer, "optimizer", optimizer)
            sel.advance(kwargs["model"], optimizer, state.global_step)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Write the selector's state (round, stream position, compute) into the checkpoint folder."""
        folder = self._checkpoint(args, state)
        if not folder.is_dir():
            raise CorpusAgentsError(
                f"SelectionCallback: no checkpoint folder {folder} to save the selector in"
            )
        with atomic_path(folder / SELECTOR_FILE) as tmp:
            torch.save(self.selector.state_dict(), tmp)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Training losses go to the run's log as step records."""
        if not logs or "loss" not in logs:
            return
        now = time.perf_counter()
        tokens = (state.global_step - self._logged_step) * self.selector.tokens_per_step
        speed = round(tokens / max(now - self._last_log, 1e-9))
        lr = float(logs.get("learning_rate", 0))
        self.selector.log_step(state.global_step, float(logs["loss"]), lr, speed, round_=self._trained_round)
        self._last_log, self._logged_step = now, state.global_step

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Count the last round's consumption and log the final record."""
        self.selector.finish(kwargs["model"], state.global_step)


__all__ = ["SELECTOR_FILE", "SelectionCallback"]
