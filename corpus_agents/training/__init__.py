"""The training half: select from the scored corpus and train with feedback from reference tasks.

- `references`: reference tasks (answer-only loss), split into probe and held-out halves.
- `rewards`: how much a probe batch of documents helps the reference tasks, measured on the live model.
- `console`: agent memory and collaboration weights; fuses agents' labels into a selection by cells.
- `selection`: the selection snapshot (Parquet) a run reads.
- `reader`: streams a snapshot's documents as packed token blocks to the trainer.
- `selector`: the rounds for any training loop (probes, rewards, console, the resumable selection stream);
  `hf`: a Hugging Face `Trainer` callback built on it.
- `models`, `distributed`, `trainer`: the causal LM, DDP, and the built-in training loop (on the selector).
- `runs`: a run's directory, log and catalog tables.
"""
