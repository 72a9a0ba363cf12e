"""The scoring half: turn Parquet shards into labels and scores, batch by batch, committed to a catalog.

- `corpus`: registered shards, reading their text in batches (`DocBatch`), fingerprints.
- `hub`: materialising a Hugging Face dataset as local shards (`init --from-hub`).
- `agents/`: the scorers; each turns a batch into a label and a raw score per document.
- `parts`: the worker side (no DuckDB): score one shard for several agents, write each part atomically.
- `executors/`: run worker tasks in a local process pool or on Ray; they know nothing about agents.
- `driver`: plan the missing parts, hand them to an executor, commit each part exactly once.
- `catalog`: the DuckDB workspace catalog that owns every statement in `sql/`.
"""
