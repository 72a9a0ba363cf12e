"""The `corpus-agents` command line: init, agent add/list/remove, score, status, query, demo."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from corpus_agents.config import SelectionMode
from corpus_agents.errors import EXTRAS, CorpusAgentsError, install_hint
from corpus_agents.names import check_agent_name, check_run_id


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print user-facing errors as one line (`error: ...`) and exit 2 instead of a traceback; a missing
    optional package names the extra that brings it."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CorpusAgentsError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in EXTRAS:
                raise
            command = click.get_current_context().command_path
            click.echo(f"error: {install_hint(exc.name or '', command)}", err=True)
            sys.exit(2)

    return wrapper


class Checked(click.ParamType):
    """A value checked by one of `corpus_agents.names`' checks: a bad one is click's usage error (exit 2)."""

    def __init__(self, name: str, check: Callable[[str], Any]):
        self.name = name
        self.check = check

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.check(value)
        except CorpusAgentsError as exc:
            self.fail(str(exc), param, ctx)


def agent_list(value: str) -> list[str]:
    """Comma-separated agent names (spaces around them ignored): at least one, none empty."""
    names = [n.strip() for n in value.split(",")]
    if not any(names):
        raise CorpusAgentsError(f"no agent names in {value!r}; give NAME[,NAME...]")
    if not all(names):
        raise CorpusAgentsError(f"an empty agent name in {value!r}; give NAME[,NAME...]")
    return [check_agent_name(n) for n in names]


def renamed(
    old: str, new: str, dest: str, **attrs: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Keep `old`, the previous spelling of the option `new` (parameter `dest`), for one release: hidden from
    --help, it prints one deprecation line to stderr and gives its value to `dest`. `attrs` are the option's
    type and flags, so the old spelling is checked as the new one is."""
    old_dest = f"deprecated_{dest}"

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            value = kwargs.pop(old_dest)
            if ctx.get_parameter_source(old_dest) == click.core.ParameterSource.COMMANDLINE:
                if ctx.get_parameter_source(dest) == click.core.ParameterSource.COMMANDLINE:
                    raise click.UsageError(f"{old} is the old spelling of {new}; give {new} only")
                click.echo(
                    f"warning: {old} is deprecated, use {new} ({old} goes in the next release)", err=True
                )
                kwargs[dest] = value
            return fn(*args, **kwargs)

        return click.option(old, old_dest, hidden=True, **attrs)(wrapper)

    return decorator


def echo_json(value: Any) -> None:
    """`--json` output: one JSON document (objects with stable keys), values that are not JSON as text."""
    click.echo(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def next_hint(*commands: str) -> None:
    """What to run next, after a command that changes the workspace."""
    click.echo("next: " + "; ".join(commands))


AGENT_NAME = Checked("agent name", check_agent_name)
AGENT_LIST = Checked("agent names", agent_list)
RUN_ID = Checked("run id", check_run_id)
POSITIVE = click.IntRange(min=1)
NON_NEGATIVE = click.IntRange(min=0)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="corpus-agents")
def main() -> None:
    """Multi-agent data selection for LM pretraining: score Parquet corpora with agents into DuckDB.

    \b
    Example:
      corpus-agents init ws --corpus 'shards/*.parquet'
      corpus-agents agent add ws domain --kind metadata --column source
      corpus-agents score ws
      corpus-agents query ws "SELECT domain, count(*) FROM doc_labels GROUP BY ALL"
    """


@main.command()
@click.argument("workspace", type=click.Path(file_okay=False))
@click.option(
    "--corpus",
    "patterns",
    multiple=True,
    help="Parquet shards: paths, globs or URLs (s3://, gs://, file://); repeatable.",
)
@click.option(
    "--from-hub",
    "hub_name",
    help="A dataset to stream into Parquet shards under WS/corpus/: hub name, local directory or data files.",
)
@click.option("--hub-config", "hub_config", help="--from-hub: the dataset's config (subset).")
@click.option("--split", default="train", show_default=True, help="--from-hub: the split.")
@click.option("--max-rows", type=POSITIVE, help="--from-hub: stop after this many rows.")
@click.option("--shard-rows", type=POSITIVE, help="--from-hub: rows per shard.")
@click.option(
    "--shard-mb",
    type=click.FloatRange(0, min_open=True),
    help="--from-hub: shard size on disk in MB (default 256).",
)
@click.option(
    "--parts-url",
    help="Where score parts go: a directory or an fsspec URL (s3://bucket/parts, file://...); default WS/parts.",
)
@click.option(
    "--text-column", default="text", show_default=True, help="String column holding the document text."
)
@click.option("--threads", type=POSITIVE, default=4, show_default=True, help="Shards inspected in parallel.")
@click.option(
    "--refresh",
    is_flag=True,
    help="Check known shards byte for byte and re-register changed ones (only their parts are rescored).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@renamed("--config", "--hub-config", "hub_config")
@user_errors
def init(
    workspace: str,
    patterns: tuple[str, ...],
    hub_name: str | None,
    hub_config: str | None,
    split: str,
    max_rows: int | None,
    shard_rows: int | None,
    shard_mb: float | None,
    parts_url: str | None,
    text_column: str,
    threads: int,
    refresh: bool,
    quiet: bool,
) -> None:
    """Create a workspace and register shards (re-run to add new shards; known ones are skipped).

    A shard changed since it was registered is refused everywhere; `--refresh` (alone, or with --corpus)
    re-registers it, and the next `score` rescores that shard only.

    With --from-hub the dataset is streamed into zstd Parquet shards in the workspace first; a re-run after
    a crash resumes after the last complete shard.

    \b
    Examples:
      corpus-agents init ws --corpus 'data/*.parquet' --text-column text
      corpus-agents init ws --corpus 's3://bucket/shards/*.parquet' --parts-url s3://bucket/ws-parts
      corpus-agents init ws --from-hub DKYoon/SlimPajama-6B --split train --max-rows 1000000 --shard-rows 100000
      corpus-agents init ws --from-hub allenai/c4 --hub-config en --max-rows 100000
    """
    from corpus_agents.workspace import Workspace

    if bool(patterns) == bool(hub_name) and not (refresh and not hub_name):
        raise CorpusAgentsError("pass either --corpus PATTERN or --from-hub NAME")
    source = None
    if hub_name:
        from corpus_agents.scoring.hub import HubSource, normalize_name

        source = HubSource(normalize_name(hub_name), hub_config, split, max_rows, shard_rows, shard_mb)
    with Workspace.init(workspace, text_column=text_column, parts_url=parts_url) as ws:
        if source is not None:
            hub = ws.stream_from_hub(source, show_progress=not quiet)
            click.echo(
                f"{len(hub.shards)} shards, {hub.rows:,} rows in {hub.directory} "
                f"({hub.new_rows:,} written now, {hub.resumed_shards} shards from an earlier run)"
            )
            patterns = (str(hub.directory),)
        report = ws.add_corpus(list(patterns), threads=threads, refresh=refresh)
        size = ws.corpus_size()
        missing = ws.missing_shards()
        has_agents = bool(ws.agent_names())
    click.echo(
        f"registered {len(report.added)} new shards ({len(report.unchanged)} already known); "
        f"workspace has {size.shards} shards, {size.documents:,} documents"
    )
    for uri in report.refreshed:
        click.echo(f"re-registered changed shard {uri}; its parts are rescored by the next `score`")
    errors = [*report.errors]
    errors += [f"registered shard {uri} is missing (deleted or moved); scoring it fails" for uri in missing]
    for err in errors:
        click.echo(f"error: {err}", err=True)
    if errors:
        sys.exit(1)
    quoted = shlex.quote(workspace)
    if has_agents:
        next_hint(f"corpus-agents score {quoted}")
    else:
        next_hint(
            f"corpus-agents agent add {quoted} NAME --kind KIND ... (kinds and options: agent add --help)"
        )


@main.group()
def agent() -> None:
    """Add, list and remove agents (scorers) of a workspace.

    \b
    Example:
      corpus-agents agent add ws domain --kind metadata --column source
      corpus-agents agent list ws --json
    """


@agent.command("add")
@click.argument("workspace", type=click.Path(exists=True, file_okay=False))
@click.argument("name", required=False, type=AGENT_NAME)
@click.option(
    "--kind",
    help="fasttext, metadata, column, attributes, topic, hf-classifier, noise, or a kind an installed "
    "package adds (entry points `corpus_agents.agents`).",
)
@click.option(
    "--pipeline",
    type=click.Path(exists=True, dir_okay=False),
    help="Add the agents of a pipeline YAML's `agents:` section (all, or NAME only).",
)
@click.option(
    "--set", "overrides", multiple=True, help="With --pipeline: override agents.NAME.KEY=VALUE (repeatable)."
)
@click.option("--model", help="fasttext: a .bin/.ftz file; hf-classifier: a model directory or hub name.")
@click.option(
    "--label", help="fasttext, hf-classifier: the class whose probability is the score (binned by --bins)."
)
@click.option(
    "--bins",
    help="fasttext, hf-classifier, column, attributes: bin edges of the score, e.g. 0,0.2,0.4,0.6,0.8,1 "
    "(hf regression default 0,1,2,3,4,5).",
)
@click.option(
    "--quantiles",
    type=int,
    help="column, attributes: this many equal-count bins over the corpus (default 5).",
)
@click.option(
    "--fit-positive",
    type=click.Path(exists=True, dir_okay=False),
    help="fasttext: fit a classifier with this reference Parquet as positives (DCLM-style).",
)
@click.option(
    "--positive-columns",
    help="fasttext: columns of the positive set joined as text (default: text or all strings).",
)
@click.option(
    "--fit-negative",
    help="fasttext: negatives, 'sample' (random corpus documents, the default) or a Parquet file.",
)
@click.option("--negative-columns", help="fasttext: columns of a negative Parquet file joined as text.")
@click.option("--fit-samples", type=int, help="fasttext: at most this many positives (default 20000).")
@click.option("--column", help="metadata, column: the corpus column (dots for nested fields: meta.source).")
@click.option(
    "--files",
    help="attributes: side files keyed by document id, Parquet or JSON lines (paths or globs, comma-separated).",
)
@click.option(
    "--field",
    help="attributes: the label or score in the side files (dots into structs: attributes.quality).",
)
@click.option("--id-column", help="attributes: the document id column of the side files (default id).")
@click.option(
    "--doc-id-column", help="attributes: the document id column of the shards (default --id-column)."
)
@click.option("--topics", type=int, help="topic: number of topics (default 16).")
@click.option("--sample", type=int, help="topic: corpus documents to fit on (default 20000).")
@click.option("--method", help="topic: tfidf (default) or minilm, the representation k-means clusters.")
@click.option(
    "--seed",
    type=int,
    help="topic: seed of the sample and of k-means; noise: seed of the labels (default 0).",
)
@click.option("--labels", type=int, help="noise: number of random labels (default 5).")
@click.option("--max-length", type=int, help="hf-classifier: truncation in tokens (default 512).")
@click.option("--batch-tokens", type=int, help="hf-classifier: tokens per batch (default 16384).")
@click.option("--dtype", help="hf-classifier: auto (default: bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32.")
@click.option("--device", help="hf-classifier: auto (default), cpu or cuda.")
@click.option("--trust-remote-code", is_flag=True, help="hf-classifier: allow the model's own code to run.")
@click.option(
    "--option",
    "extra_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any option of the kind, e.g. one of a kind from another package (repeatable; VALUE is YAML).",
)
@click.option("--replace", is_flag=True, help="Redefine an existing agent (drops its scores).")
@user_errors
def agent_add(
    workspace: str,
    name: str | None,
    kind: str | None,
    pipeline: str | None,
    overrides: tuple[str, ...],
    extra_options: tuple[str, ...],
    replace: bool,
    **options: Any,
) -> None:
    """Add an agent: fits what needs fitting, discovers its labels, stores its config.

    Each option belongs to the kinds named in its help; one of another kind is an error.
    With --pipeline, adds the agents a pipeline YAML declares (`agents: {NAME: {kind: ..., OPTION: ...}}`,
    options as below with underscores); agents already in the workspace are kept unless --replace.

    \b
    Examples:
      corpus-agents agent add ws lang --kind fasttext --model lid.176.ftz
      corpus-agents agent add ws quality --kind fasttext --fit-positive ref.parquet
      corpus-agents agent add ws domain --kind metadata --column source
      corpus-agents agent add ws edu --kind column --column score --bins 0,1,2,3,4,5
      corpus-agents agent add ws qual --kind attributes --files 'attributes/*.jsonl.gz' --field attributes.quality
      corpus-agents agent add ws topic --kind topic --topics 16
      corpus-agents agent add ws edu --kind hf-classifier --model HuggingFaceFW/fineweb-edu-classifier
      corpus-agents agent add ws noise1 --kind noise --labels 4 --seed 1
      corpus-agents agent add ws --pipeline pipelines/slimpajama-1.3b.yaml --set agents.quality.device=cpu
    """
    from corpus_agents.config import AgentSpec, ConfigError, load_config, parse_override
    from corpus_agents.scoring.agents import agent_class, make_options
    from corpus_agents.workspace import Workspace

    ctx = click.get_current_context()
    given = {
        option: value
        for option, value in options.items()
        if ctx.get_parameter_source(option) == click.core.ParameterSource.COMMANDLINE
    }
    for item in extra_options:
        keys, value = parse_override(item)
        given[".".join(keys).replace("-", "_")] = value
    if pipeline:
        if kind or given:
            raise CorpusAgentsError(
                f"with --pipeline the agents' options come from the file; use --set agents.NAME.KEY=VALUE "
                f"instead of --{(['kind'] if kind else list(given))[0].replace('_', '-')}"
            )
        specs = load_config(pipeline, list(overrides)).agents
        if not specs:
            raise ConfigError(
                f"pipeline {pipeline} has no `agents:` section (NAME: {{kind: ..., OPTION: ...}})"
            )
        if name is not None:
            if name not in specs:
                raise CorpusAgentsError(f"pipeline {pipeline} declares no agent {name!r}")
            specs = {name: specs[name]}
    elif overrides:
        raise CorpusAgentsError("--set needs --pipeline")
    elif not name or not kind:
        raise CorpusAgentsError("give the agent's NAME and --kind (or --pipeline FILE)")
    else:
        agent_class(kind)  # an unknown kind is named before its options
        specs = {name: AgentSpec(kind, make_options(kind, given))}
    classes = {spec.kind: agent_class(spec.kind) for spec in specs.values()}
    for cls in classes.values():
        cls.check_requirements()
    with Workspace.open(workspace) as ws:
        existing = ws.agent_names()
        for agent_name, spec in specs.items():
            if pipeline and not replace and agent_name in existing:
                click.echo(f"kept agent {agent_name} (in the workspace already; --replace redefines it)")
                continue
            new = ws.add_agent(agent_name, spec.kind, spec.options, replace=replace)
            labels = new.labels
            shown = ", ".join(labels[:12]) + (f", ... ({len(labels)} in all)" if len(labels) > 12 else "")
            click.echo(f"added agent {agent_name} ({spec.kind}) with labels: {shown}")
    next_hint(f"corpus-agents score {shlex.quote(workspace)}")


@agent.command("list")
@click.argument("workspace", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="A JSON list of {name, kind, labels, config}.")
@user_errors
def agent_list(workspace: str, as_json: bool) -> None:
    """List a workspace's agents with their kind, labels and config.

    \b
    Example:
      corpus-agents agent list ws
      corpus-agents agent list ws --json
    """
    from corpus_agents.workspace import Workspace

    with Workspace.open(workspace) as ws:
        agents = list(ws.agents.values())
    if as_json:
        echo_json([a.to_dict() for a in agents])
        return
    for a in agents:
        rest = {k: v for k, v in a.config.items() if k not in ("classes", "top_terms")}
        click.echo(f"{a.name}\t{a.kind}\t{len(a.labels)} labels\t{json.dumps(rest)}")


@agent.command("remove")
@click.argument("workspace", type=click.Path(exists=True, file_okay=False))
@click.argument("name")
@user_errors
def agent_remove(workspace: str, name: str) -> None:
    """Remove an agent and its scores.

    \b
    Example:
      corpus-agents agent remove ws noise1
    """
    from corpus_agents.workspace import Workspace

    with Workspace.open(workspace) as ws:
        ws.remove_agent(name)
    click.echo(f"removed agent {name}")


@main.command()
@click.argument("workspace", type=click.Path(exists=True, file_okay=False))
@click.option("--agents", type=AGENT_LIST, help="Comma-separated agents to run (default: all).")
@click.option(
    "--workers",
    type=POSITIVE,
    default=None,
    help="Worker processes (default: CPU cores); with --executor ray, CPU actors (default: the cluster's CPUs).",
)
@click.option(
    "--limit", type=POSITIVE, help="Score only the first N documents (partial parts, for a quick look)."
)
@click.option(
    "--sample-fraction",
    "sample",
    type=click.FloatRange(0, 1, min_open=True),
    help="Score a random fraction of each shard (partial parts, for a quick look).",
)
@click.option("--seed", type=NON_NEGATIVE, default=0, show_default=True, help="Seed of --sample-fraction.")
@click.option("--batch-rows", type=POSITIVE, default=2048, show_default=True, help="Documents per batch.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: a process pool on this machine; ray: Ray Data actor pools (pip install 'corpus-agents[distributed]').",
)
@click.option(
    "--address",
    help="Ray cluster to join with --executor ray: auto or HOST:PORT (default: a local Ray instance).",
)
@renamed("--sample", "--sample-fraction", "sample", type=click.FloatRange(0, 1, min_open=True))
@user_errors
def score(
    workspace: str,
    agents: list[str] | None,
    workers: int | None,
    limit: int | None,
    sample: float | None,
    seed: int,
    batch_rows: int,
    quiet: bool,
    executor: str,
    address: str | None,
) -> None:
    """Score every pending (agent, shard) part; committed parts with an unchanged agent are skipped.

    A failed shard is reported with its reason and retried by the next run; the others finish.

    \b
    Examples:
      corpus-agents score ws --agents quality,domain --workers 8
      corpus-agents score ws --sample-fraction 0.01
      corpus-agents score ws --executor ray --address auto
    """
    from corpus_agents.scoring.executors.local import start_pool_server

    if executor == "local" and (workers or os.cpu_count() or 1) > 1:
        start_pool_server()  # its imports overlap ours and the catalog's opening
    from corpus_agents.workspace import Workspace

    with Workspace.open(workspace) as ws:
        summary = ws.score(
            agents,
            workers=workers,
            limit=limit,
            sample=sample,
            seed=seed,
            batch_rows=batch_rows,
            show_progress=not quiet,
            executor=executor,
            address=address,
        )
    rate = summary.docs / summary.seconds if summary.seconds else 0.0
    click.echo(
        f"committed {len(summary.committed)} parts, {summary.skipped} already done, "
        f"{len(summary.failed)} failed; {summary.docs:,} docs in {summary.seconds:.1f}s ({rate:,.0f} docs/s)"
    )
    for r in summary.failed:
        click.echo(f"failed: {r.error}", err=True)
    quoted = shlex.quote(workspace)
    if summary.failed:
        next_hint(f"corpus-agents score {quoted} (retries the failed parts)")
        sys.exit(1)
    next_hint(
        f'corpus-agents query {quoted} "SELECT * FROM doc_labels LIMIT 10"',
        f"corpus-agents train {quoted} --pipeline PIPELINE.yaml",
    )


@main.command()
@click.argument("workspace", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object: directory, corpus, agents, failures.")
@user_errors
def status(workspace: str, as_json: bool) -> None:
    """Shards, agents, and parts committed / pending / failed, with documents scored.

    \b
    Examples:
      corpus-agents status ws
      corpus-agents status ws --json
    """
    from rich.text import Text

    from corpus_agents.query import make_console, text_table
    from corpus_agents.workspace import Workspace

    with Workspace.open(workspace, read_only=True) as ws:
        summary = ws.status()
    if as_json:
        echo_json(summary.to_dict())
        return
    console = make_console()
    corpus = summary.corpus
    console.print(
        f"workspace {summary.directory}: {corpus.shards} shards, {corpus.documents:,} documents, "
        f"{corpus.bytes / 1e6:,.1f} MB",
        markup=False,
    )
    header = ("agent", "kind", "labels", "committed", "partial", "pending", "failed", "docs scored")
    rows = [
        (
            a.name,
            a.kind,
            a.labels,
            a.committed,
            a.partial,
            a.pending if a.pending is not None else f"? ({a.pending_error})",
            a.failed,
            f"{a.docs_scored:,}",
        )
        for a in summary.agents
    ]
    console.print(text_table(header, rows))
    for agent_name, shard_id, error in summary.failures:
        console.print(Text.assemble(("failed", "red"), f" {agent_name} shard {shard_id}: {error}"))
    for agent_name, shard_id, why in summary.inconsistent:
        console.print(
            Text.assemble(
                ("inconsistent", "red"), f" {agent_name} shard {shard_id}: {why}; `score` rescores it"
            )
        )


@main.command()
@click.argument("workspace", type=click.Path(exists=True, file_okay=False))
@click.option("--agents", type=AGENT_LIST, help="Comma-separated agents to compact (default: all).")
@click.option(
    "--target-rows",
    type=POSITIVE,
    default=1_000_000,
    show_default=True,
    help="Parts under this many documents are tiny; a compacted file holds up to this many.",
)
@user_errors
def compact(workspace: str, agents: list[str] | None, target_rows: int) -> None:
    """Rewrite an agent's many tiny score parts (thousands of small shards) as a few files, so readers of
    part files do not pay per part. Safe to kill and re-run; the scores do not change.

    \b
    Example:
      corpus-agents compact ws --agents quality,domain
    """
    from corpus_agents.scoring.compaction import compact_parts
    from corpus_agents.workspace import Workspace

    with Workspace.open(workspace) as ws:
        summary = compact_parts(ws.catalog, agents, target_rows=target_rows)
    click.echo(
        f"compacted {summary.parts_compacted} parts into {summary.files_written} files; "
        f"removed {summary.files_removed} files"
    )


@main.command()
@click.argument("workspace", type=click.Path(exists=True, file_okay=False))
@click.argument("sql")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "parquet"]),
    default="table",
    show_default=True,
)
@click.option("--output", type=click.Path(dir_okay=False), help="Write the result to this file.")
@click.option(
    "--show-rows", type=NON_NEGATIVE, default=100, show_default=True, help="Rows shown by --format table."
)
@renamed("--max-rows", "--show-rows", "show_rows", type=NON_NEGATIVE)
@click.option(
    "--writable",
    is_flag=True,
    help="Allow statements that change the catalog (repairs); waits for no run, refused while one holds it.",
)
@user_errors
def query(workspace: str, sql: str, fmt: str, output: str | None, show_rows: int, writable: bool) -> None:
    """Run SQL on the catalog (tables: shards, docs, agents, agent_labels, scores, score_parts; view: doc_labels).

    Read-only, also while `score` or `train` runs: statements that change the catalog, write files (COPY),
    ATTACH databases or INSTALL extensions are refused; --format/--output write the result. `--writable`
    runs any statement on a locked catalog: deleting or editing rows of scores or score_parts can leave
    them disagreeing (`status` names that, `score` rescores such parts).

    \b
    Example:
      corpus-agents query ws "SELECT domain, quality, count(*) FROM doc_labels GROUP BY ALL ORDER BY ALL"
    """
    from corpus_agents.query import write_result
    from corpus_agents.workspace import Workspace

    with Workspace.open(workspace, read_only=not writable) as ws:
        table = ws.query(sql)
    write_result(table, fmt, output, show_rows)


@main.command()
@click.argument("workspace", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--pipeline", "config_path", type=click.Path(exists=True, dir_okay=False), help="Pipeline YAML."
)
@click.option("--run", "run_id", type=RUN_ID, help="Run name (default: the config file's name).")
@click.option("--resume", is_flag=True, help="Continue the run from its last checkpoint.")
@click.option(
    "--init-from", type=RUN_ID, help="Start the console from another run's learnt agent memory and weights."
)
@click.option(
    "--allow-config-change",
    "allow_changes",
    multiple=True,
    metavar="KEY",
    help="--resume: a config key (train.steps, ...) allowed to differ from the run's; repeatable or comma-separated.",
)
@click.option(
    "--reset-agent",
    "reset_agents",
    multiple=True,
    metavar="NAME",
    help="--resume/--init-from: start a fresh memory for an agent replaced since the run started (repeatable).",
)
@click.option(
    "--set", "overrides", multiple=True, help="Override a config value: section.key=value (repeatable)."
)
@click.option(
    "--print-config",
    is_flag=True,
    help="Print the effective config (all defaults filled in) as YAML and exit.",
)
@renamed("--config", "--pipeline", "config_path", type=click.Path(exists=True, dir_okay=False))
@user_errors
def train(
    workspace: str,
    config_path: str | None,
    run_id: str | None,
    resume: bool,
    init_from: str | None,
    allow_changes: tuple[str, ...],
    reset_agents: tuple[str, ...],
    overrides: tuple[str, ...],
    print_config: bool,
) -> None:
    """Train a causal LM on the documents the console selects, re-weighting the agents every round.

    Several GPUs (or CPU processes): launch the same command under torchrun, with `--` before the module
    (else torchrun takes `--run` for its own `--run-path`). Rank 0 owns the workspace catalog and the
    console, the probes' rewards are split across the ranks and each rank reads its own slice of every
    selection; `train.batch_size` is per rank. Resume the same way, with `--resume`.

    `--resume` compares the whole config with the run's: name the keys meant to change with
    `--allow-config-change` (they apply everywhere, the LR schedule included). An agent replaced since the run
    started is refused unless `--reset-agent NAME` gives it a fresh memory.

    \b
    Examples:
      corpus-agents train ws --pipeline pipelines/demo.yaml --set console.eta_theta=0.5
      corpus-agents train ws --pipeline pipelines/demo.yaml --resume
      corpus-agents train ws --pipeline pipelines/demo.yaml --resume --set train.steps=4000 --allow-config-change train.steps
      corpus-agents train ws --pipeline pipelines/demo.yaml --run refreshed --init-from demo
      torchrun --nproc-per-node 4 -m -- corpus_agents.cli train ws --pipeline pipelines/demo.yaml --run ddp
    """
    from corpus_agents.config import dump_config, load_config

    config = load_config(config_path, list(overrides))
    if print_config:
        click.echo(dump_config(config), nl=False)
        return
    from corpus_agents.scoring.catalog import Catalog
    from corpus_agents.storage import remove_path
    from corpus_agents.training.runs import RunPaths, runs_dir
    from corpus_agents.training.trainer import Trainer, start_distributed

    if run_id is None:
        run_id = Path(config_path).stem if config_path else "run"
        try:
            check_run_id(run_id)
        except CorpusAgentsError:
            raise CorpusAgentsError(
                f"the config file's name {run_id!r} is not a run id; name the run with --run"
            ) from None
    dist = start_distributed(config)
    paths = RunPaths.of(workspace, run_id)
    fresh, runs_existed = not paths.root.exists(), runs_dir(workspace).exists()
    try:
        with Catalog(workspace) if dist.is_main else contextlib.nullcontext() as cat:
            allowed = [k.strip() for item in allow_changes for k in item.split(",") if k.strip()]
            final = Trainer(
                cat,
                config,
                run_id,
                init_from=init_from,
                dist=dist,
                allow_config_change=allowed,
                reset_agents=list(reset_agents),
            ).train(resume=resume)
    except BaseException:
        # A new run that fails before its first checkpoint leaves no directory (a resumed run's files stay).
        if dist.is_main and fresh and paths.latest_checkpoint() is None:
            remove_path(paths.root)
            if not runs_existed:
                with contextlib.suppress(OSError):
                    runs_dir(workspace).rmdir()
        raise
    finally:
        dist.close()
    if not dist.is_main:
        return
    losses = ", ".join(f"{k} {v:.4f}" for k, v in final["heldout_loss"].items())
    click.echo(f"run {run_id}: {final['step']} steps, {final['tokens']:,} tokens; held-out loss: {losses}")
    quoted = shlex.quote(workspace)
    next_hint(
        f"corpus-agents runs {quoted}",
        f"corpus-agents report {quoted}",
        f"corpus-agents export {quoted} --run {run_id} --out DIR",
    )


@main.command()
@click.argument("workspace", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="A JSON list with one object per run (the columns).")
@user_errors
def runs(workspace: str, as_json: bool) -> None:
    """Training runs with their rounds, training tokens, compute, held-out loss, current theta and whether
    each agent carries any signal.

    compute_flops is the run's cost so far: training plus the reward probes and reference gradients
    (6 x N x tokens each; held-out evaluation is not charged); probe_share is the part spent on rewards.
    signal (console v2 runs), per agent over the rounds that measured it (their number in brackets): `t`, its
    mean advantage over random selection divided by that mean's standard error across those rounds, and `rel`,
    the mean split-half reliability of its label effects. Under no signal t is about a Student t with
    (measured rounds - 1) degrees of freedom, so it is usually below 2; with 9 measured rounds, t above 2.3
    is evidence at the 5% level that the agent's preferences beat random selection. rel is a weaker sign: it
    is clipped at 0, so even an agent of pure noise averages above 0.

    \b
    Examples:
      corpus-agents runs ws
      corpus-agents runs ws --json
      corpus-agents query ws "SELECT * FROM collab_weights WHERE run_id = 'demo' ORDER BY round"
      corpus-agents query ws "SELECT * FROM round_compute WHERE run_id = 'demo' ORDER BY step, kind"
    """
    from corpus_agents.query import write_result
    from corpus_agents.workspace import Workspace

    with Workspace.open(workspace, read_only=True) as ws:
        table = ws.runs()
    if as_json:
        echo_json(table.to_pylist())
        return
    write_result(table, "table", None, max_rows=1000)


@main.command()
@click.argument("workspace", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--runs", "run_ids", multiple=True, help="Runs to include (repeatable or comma-separated; default: all)."
)
@click.option("--out", type=click.Path(file_okay=False), help="Output directory (default: WORKSPACE/report).")
@click.option(
    "--group",
    help="Regex on the run id whose first group (or match) names the configuration "
    "(default: the run id without a -seedN suffix).",
)
@user_errors
def report(workspace: str, run_ids: tuple[str, ...], out: str | None, group: str | None) -> None:
    """Write an HTML page with PNG plots of training runs: loss and held-out loss vs tokens per configuration
    (mean and min-max over seeds), theta and each agent's w over rounds, the selection's label shares.

    \b
    Examples:
      corpus-agents report ws
      corpus-agents report ws --runs method-seed0,method-seed1,random-seed0 --out report/
      corpus-agents report ws --group '^(lr[0-9.e-]+)'
    """
    from corpus_agents.report import write_report

    wanted = [check_run_id(r.strip()) for item in run_ids for r in item.split(",") if r.strip()]
    if run_ids and not wanted:
        raise CorpusAgentsError(f"no run ids in --runs {','.join(run_ids)!r}")
    index = write_report(workspace, wanted or None, out, group)
    click.echo(f"wrote {index}")


@main.command("select")
@click.argument("workspace", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--run",
    "run_id",
    type=RUN_ID,
    required=True,
    help="The run whose selection to show (or to create with --static).",
)
@click.option("--round", "round_", type=NON_NEGATIVE, help="The round (default: the run's last).")
@click.option(
    "--static", is_flag=True, help="Fuse the agents and select without training (round 0 of --run)."
)
@click.option(
    "--tokens",
    type=POSITIVE,
    default=1_000_000,
    show_default=True,
    help="Token budget of a --static selection: real tokens of --tokenizer (EOS included), else estimated.",
)
@click.option(
    "--tokenizer",
    help="Tokenizer directory or hub name that a --static selection's budget counts (default: the "
    "--init-from run's; without one the catalog's bytes-per-token estimate).",
)
@click.option(
    "--mode",
    type=click.Choice(typing.get_args(SelectionMode)),
    help="How a --static selection turns priorities into documents (default: the console preset's, "
    "`sample` for v2, `topk` for the paper's).",
)
@click.option(
    "--pipeline",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Pipeline YAML whose console section (agents, prior, ...) a --static selection uses.",
)
@click.option("--init-from", type=RUN_ID, help="A --static selection with the learnt weights of this run.")
@click.option(
    "--print-config",
    is_flag=True,
    help="Print the effective config of a --static selection (--pipeline with --mode applied) as YAML and exit.",
)
@renamed("--config", "--pipeline", "config_path", type=click.Path(exists=True, dir_okay=False))
@user_errors
def select_cmd(
    workspace: str,
    run_id: str,
    round_: int | None,
    static: bool,
    tokens: int,
    mode: str | None,
    config_path: str | None,
    init_from: str | None,
    tokenizer: str | None,
    print_config: bool,
) -> None:
    """Summarise a run's selection of a round, or make a static one (fusion + top-k, no training feedback).

    \b
    Examples:
      corpus-agents select ws --run demo --round 3
      corpus-agents select ws --run refreshed --static --init-from demo --tokens 5000000
    """
    import dataclasses

    from corpus_agents.config import dump_config, load_config

    config = load_config(config_path)
    if mode is not None:
        config.console = dataclasses.replace(config.console, mode=mode)
    if print_config:
        click.echo(dump_config(config), nl=False)
        return
    from corpus_agents.workspace import Workspace

    with Workspace.open(workspace, read_only=not static) as ws:
        if static:
            ws.static_selection(
                run_id, tokens, console=config.console.to_dict(), init_from=init_from, tokenizer=tokenizer
            )
            round_ = 0
        click.echo(ws.describe_selection(run_id, round_))


@main.command()
@click.argument("workspace", type=click.Path(exists=True, file_okay=False))
@click.option("--run", "run_id", type=RUN_ID, required=True)
@click.option("--round", "round_", type=NON_NEGATIVE, help="The round (default: the run's last).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option(
    "--format",
    "format_",
    type=click.Choice(["parquet", "tokens", "hf"]),
    default="parquet",
    show_default=True,
    help="parquet: text, labels and scores; tokens: datatrove .ds token files; hf: a datasets dataset.",
)
@click.option(
    "--tokenizer", help="Tokenizer directory or hub name to count and write tokens (default: the run's)."
)
@click.option(
    "--shard-docs", type=POSITIVE, default=100_000, show_default=True, help="Documents per Parquet file."
)
@click.option(
    "--shard-tokens",
    type=POSITIVE,
    default=100_000_000,
    show_default=True,
    help="Tokens per .ds file (--format tokens; a document is never split).",
)
@click.option(
    "--seed",
    type=NON_NEGATIVE,
    default=0,
    show_default=True,
    help="Shuffle of documents inside each .ds file.",
)
@user_errors
def export(
    workspace: str,
    run_id: str,
    round_: int | None,
    out: str,
    format_: str,
    tokenizer: str | None,
    shard_docs: int,
    shard_tokens: int,
    seed: int,
) -> None:
    """Write a round's selected documents for any trainer: Parquet (text, labels and scores), pre-tokenised
    token files in datatrove's format (read by its DatatroveFolderDataset), or a `datasets` dataset
    (load_from_disk). Tokens are the run's tokenizer's (or --tokenizer's), each document followed by EOS.
    A re-run after a kill finishes the same export.

    \b
    Example:
      corpus-agents export ws --run demo --round 3 --out subset/
      corpus-agents export ws --run demo --format tokens --out tokens/
    """
    from corpus_agents.scoring.catalog import Catalog
    from corpus_agents.training.export import export_run

    with Catalog(workspace) as cat:
        summary = export_run(
            cat,
            run_id,
            round_,
            Path(out),
            format_,
            tokenizer=tokenizer,
            shard_docs=shard_docs,
            shard_tokens=shard_tokens,
            seed=seed,
        )
    click.echo(summary.line())


@main.command()
@click.option(
    "--workspace",
    type=click.Path(file_okay=False),
    default="demo-workspace",
    show_default=True,
    help="Where to build the demo corpus and workspace (recreated).",
)
@click.option("--workers", type=POSITIVE, default=None, help="Worker processes (default: CPU cores).")
@click.option("--no-train", is_flag=True, help="Stop after scoring and the SQL summaries.")
@user_errors
def demo(workspace: str, workers: int | None, no_train: bool) -> None:
    """Build a multi-domain corpus from text on this machine, add agents, score, query, then train the same
    tiny model with the method and with random selection and show how the agents' weights moved.

    \b
    Examples:
      corpus-agents demo
      corpus-agents demo --no-train --workspace /tmp/demo-ws
    """
    from corpus_agents.demo.run import run_demo

    run_demo(Path(workspace), workers or os.cpu_count() or 1, train=not no_train)


@main.group()
def references() -> None:
    """The paper's reference tasks (LAMBADA, SQuAD, Jeopardy): build them for `{task: NAME}` in pipelines.

    \b
    Example:
      corpus-agents references build ws/references
    """


@references.command("build")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--tasks",
    default="lambada,squad",
    show_default=True,
    help="Comma-separated tasks: lambada, squad, jeopardy (jeopardy only when asked for; see its licence).",
)
@click.option(
    "--source",
    type=click.Choice(["auto", "hub", "sample"]),
    default="auto",
    show_default=True,
    help="hub: the public dataset (online or the local datasets cache), else fail; sample: the small sample "
    "shipped in the package; auto: the hub, or the sample when the hub is unreachable and nothing is cached.",
)
@user_errors
def references_build(directory: str, tasks: str, source: str) -> None:
    """Write DIRECTORY/<task>.parquet for each task and DIRECTORY/references.json (source, revision, licence).

    Built into WS/references, a pipeline's `{task: lambada}` reads it; otherwise the shipped sample.

    \b
    Examples:
      corpus-agents references build ws/references
      corpus-agents references build ws/references --tasks jeopardy --source hub
    """
    from corpus_agents.training.reference_sets import build

    build(directory, [t.strip() for t in tasks.split(",") if t.strip()], source, echo=click.echo)


if __name__ == "__main__":
    main()
