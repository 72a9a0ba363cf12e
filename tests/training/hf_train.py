"""A real `transformers.Trainer` run of a tiny Llama with the SelectionCallback (run by test_hf.py in a child
process). Usage: hf_train.py WS PIPELINE.yaml OUT RUN_ID [--kill-at STEP] [--resume]. It writes OUT/result.json:
the logged loss of every step."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from helpers import TINY
from transformers import Trainer, TrainerCallback, TrainingArguments

from corpus_agents.config import load_config
from corpus_agents.scoring.catalog import Catalog
from corpus_agents.scoring.corpus import sample_texts
from corpus_agents.training.hf import SelectionCallback
from corpus_agents.training.models import build_model, load_tokenizer, train_tokenizer
from corpus_agents.training.selector import Selector

STEPS, EVERY, SAVE_STEPS = 10, 4, 3  # rounds end after steps 4 and 8; checkpoints at 3, 6, 9 and 10


class KillAt(TrainerCallback):
    """SIGKILL this process at the end of a step (after the callbacks before it ran)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main(ws: Path, pipeline: Path, out: Path, run_id: str, kill_at: int | None, resume: bool) -> None:
    config = load_config(pipeline, [*TINY, f"rounds.every={EVERY}"])
    with Catalog(ws) as cat:
        tok_dir = ws / "hf-tokenizer"
        if (tok_dir / "tokenizer.json").is_file():
            tokenizer = load_tokenizer(str(tok_dir))
        else:
            tokenizer = train_tokenizer(sample_texts(cat, 300, seed=0), 512, tok_dir)
        model = build_model("tiny", len(tokenizer), config.model.seq_len, 0, **config.model.overrides)
        selector = Selector(cat, config, run_id, tokenizer, batch_size=2, grad_accum=1)
        args = TrainingArguments(
            str(out), max_steps=STEPS, per_device_train_batch_size=2, learning_rate=1e-3, warmup_steps=2,
            save_strategy="steps", save_steps=SAVE_STEPS, logging_steps=1, report_to="none", use_cpu=True,
            ignore_data_skip=True, dataloader_num_workers=0, seed=0, disable_tqdm=True,
        )  # fmt: skip
        callbacks = [SelectionCallback(selector)] + ([KillAt(kill_at)] if kill_at else [])
        trainer = Trainer(model=model, args=args, train_dataset=selector.dataset(), callbacks=callbacks)
        trainer.train(resume_from_checkpoint=True if resume else None)
        losses = {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}
    (out / "result.json").write_text(json.dumps({"losses": losses}))


if __name__ == "__main__":
    argv = sys.argv[1:]
    kill = int(argv[argv.index("--kill-at") + 1]) if "--kill-at" in argv else None
    main(Path(argv[0]), Path(argv[1]), Path(argv[2]), argv[3], kill, "--resume" in argv)
