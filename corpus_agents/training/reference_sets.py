"""The paper's reference tasks by name: build them from their public datasets, or use the shipped samples.

`corpus-agents references build DIR` writes `DIR/<task>.parquet` for LAMBADA, SQuAD and Jeopardy in the
column layout the pipelines' templates read, and `DIR/references.json` with each file's source, revision,
licence and row count. A pipeline names a task with `{task: lambada}`; `resolve_task` finds its file:
`WS/references/<task>.parquet` when built there, else the small sample shipped in `reference_data/`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from corpus_agents.errors import CorpusAgentsError, one_line
from corpus_agents.storage import atomic_path

SAMPLE_DIR = Path(__file__).resolve().parent / "reference_data"
MANIFEST = "references.json"
#: Where a workspace keeps its built reference sets (`corpus-agents references build WS/references`).
WORKSPACE_DIR = "references"


class ReferenceBuildError(CorpusAgentsError):
    """A reference set cannot be built (unknown task, source unreachable, unexpected columns)."""


@dataclass(frozen=True)
class Task:
    """A named reference task: its public source, the columns it is stored with and its templates."""

    name: str
    title: str
    schema: pa.Schema
    prompt: str
    answer: str
    dataset: str  # hub repository
    config: str | None
    split: str
    revision: str | None  # a pinned commit, or None for the repository's current main
    data_file: str | None  # a file in the repository read with the `json` loader (repos with a script)
    licence: str
    licence_url: str
    redistributable: bool  # whether a sample may ship in the package (see reference_data/README.md)
    source_columns: tuple[str, ...]  # the source's columns that `to_row` reads
    to_row: Callable[[dict[str, Any]], dict[str, Any] | None]

    @property
    def sample(self) -> Path | None:
        path = SAMPLE_DIR / f"{self.name}.parquet"
        return path if self.redistributable and path.is_file() else None

    def load_kwargs(self) -> dict[str, Any]:
        """Arguments of `datasets.load_dataset` for this task's source."""
        if self.data_file:  # the repository's loading script is unsupported by datasets >= 4: read the file
            url = f"hf://datasets/{self.dataset}@{self.revision or 'main'}/{self.data_file}"
            return {"path": "json", "data_files": {self.split: url}, "split": self.split}
        kwargs: dict[str, Any] = {"path": self.dataset, "name": self.config, "split": self.split}
        if self.revision:
            kwargs["revision"] = self.revision
        return kwargs


def _lambada_row(row: dict[str, Any]) -> dict[str, Any] | None:
    """LAMBADA's target is the passage's last word; the context is the words before it, spaces collapsed."""
    words = str(row["text"] or "").split()
    if len(words) < 2:
        return None
    return {"text": row["text"], "until_last": " ".join(words[:-1]), "last_word": words[-1]}


def _squad_row(row: dict[str, Any]) -> dict[str, Any] | None:
    answers = row["answers"] or {}
    return {
        "id": row["id"],
        "title": row["title"],
        "context": row["context"],
        "question": row["question"],
        "answers": {
            "text": list(answers.get("text") or []),
            "answer_start": [int(s) for s in answers.get("answer_start") or []],
        },
    }


def _jeopardy_row(row: dict[str, Any]) -> dict[str, Any] | None:
    if not row.get("context") or not row.get("continuation"):
        return None
    return {"context": row["context"], "continuation": row["continuation"], "category": row["category"]}


STRING = pa.string()
TASKS: dict[str, Task] = {
    "lambada": Task(
        name="lambada",
        title="LAMBADA, OpenAI split (Paperno et al. 2016; the test set as used for GPT-2)",
        schema=pa.schema([("text", STRING), ("until_last", STRING), ("last_word", STRING)]),
        prompt="{until_last}",
        answer=" {last_word}",
        dataset="EleutherAI/lambada_openai",
        config=None,
        split="test",
        revision="879e19a2c9bb7ef03f9cf962089cf7d008f91e27",
        data_file="data/lambada_test.jsonl",
        licence="CC BY 4.0",
        licence_url="https://creativecommons.org/licenses/by/4.0/",
        redistributable=True,
        source_columns=("text",),
        to_row=_lambada_row,
    ),
    "squad": Task(
        name="squad",
        title="SQuAD v1.1, validation split (Rajpurkar et al. 2016)",
        schema=pa.schema(
            [
                ("id", STRING),
                ("title", STRING),
                ("context", STRING),
                ("question", STRING),
                ("answers", pa.struct([("text", pa.list_(STRING)), ("answer_start", pa.list_(pa.int32()))])),
            ]
        ),
        prompt="{context}\nQuestion: {question}\nAnswer:",
        answer=" {answers[text][0]}",
        dataset="rajpurkar/squad",
        config="plain_text",
        split="validation",
        revision=None,
        data_file=None,
        licence="CC BY-SA 4.0",
        licence_url="https://creativecommons.org/licenses/by-sa/4.0/",
        redistributable=True,
        source_columns=("id", "title", "context", "question", "answers"),
        to_row=_squad_row,
    ),
    "jeopardy": Task(
        name="jeopardy",
        title="Jeopardy, MosaicML eval-gauntlet subset (clues from J! Archive)",
        schema=pa.schema([("context", STRING), ("continuation", STRING), ("category", STRING)]),
        prompt="{context}\nAnswer:",
        answer=" {continuation}",
        dataset="soldni/jeopardy",
        config="mosaicml_gauntlet",
        split="train",
        revision=None,
        data_file=None,
        licence="J! Archive terms of use (redistribution not granted)",
        licence_url="https://j-archive.com/help.php#terms",
        redistributable=False,
        source_columns=("context", "continuation", "category"),
        to_row=_jeopardy_row,
    ),
}
DEFAULT_TASKS = ("lambada", "squad")  # jeopardy is built only when asked for: its licence is unclear


def task(name: str) -> Task:
    """The named task; an unknown name is a one-line error listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ReferenceBuildError(f"unknown reference task {name!r} (known: {', '.join(TASKS)})") from None


def resolve_task(name: str, workspace: str | Path | None) -> Path:
    """The file a pipeline's `{task: NAME}` reads: `WS/references/NAME.parquet` when it was built there,
    else the sample shipped in the package; neither is a one-line error saying how to build it."""
    spec = task(name)
    if workspace is not None:
        built = Path(workspace) / WORKSPACE_DIR / f"{name}.parquet"
        if built.is_file():
            return built
    if spec.sample is not None:
        return spec.sample
    where = f"{workspace}/{WORKSPACE_DIR}" if workspace is not None else f"WS/{WORKSPACE_DIR}"
    raise ReferenceBuildError(
        f"reference task {name!r} is not built and no sample of it ships ({spec.licence}); "
        f"build it: corpus-agents references build {where} --tasks {name}"
    )


# ----- building ---------------------------------------------------------------------------------------
def _offline_error(exc: BaseException) -> bool:
    """Whether a load failed because the hub is unreachable (offline mode or network) and nothing is cached."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    return isinstance(exc, ConnectionError | OfflineModeIsEnabled | LocalEntryNotFoundError)


def _resolved_commit(spec: Task, dataset: Any) -> str | None:
    """The hub commit the rows came from: the pinned one, else the commit hash datasets caches them under."""
    if spec.revision and re.fullmatch(r"[0-9a-f]{40}", spec.revision):
        return spec.revision
    for item in getattr(dataset, "cache_files", None) or []:
        for part in reversed(Path(item.get("filename", "")).parts):
            if re.fullmatch(r"[0-9a-f]{40}", part):
                return part
    return None


def rows_to_table(spec: Task, rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Source rows in the task's stored layout (rows the mapping rejects, e.g. empty answers, dropped)."""
    mapped = [out for row in rows if (out := spec.to_row(row)) is not None]
    return pa.Table.from_pylist(mapped, schema=spec.schema)


def load_from_hub(spec: Task) -> tuple[pa.Table, str | None]:
    """The task's full set from the hub (or the local `datasets` cache) and the commit it came from."""
    import datasets

    kwargs = spec.load_kwargs()
    dataset = datasets.load_dataset(**kwargs)
    missing = sorted(set(spec.source_columns) - set(dataset.column_names))
    if missing:
        raise ReferenceBuildError(
            f"{spec.name}: {spec.dataset} has no columns {missing} (columns: {dataset.column_names})"
        )
    return rows_to_table(spec, dataset), _resolved_commit(spec, dataset)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("corpus-agents")
    except PackageNotFoundError:
        return "(not installed)"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(
    directory: str | Path,
    names: Iterable[str] = DEFAULT_TASKS,
    source: str = "auto",
    echo: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Write `DIR/<task>.parquet` for each task and merge their entries into `DIR/references.json`.

    `source`: `hub` reads the public dataset (online, or from the local `datasets` cache) and fails if it
    cannot; `sample` copies the shipped sample; `auto` tries the hub and, only when the hub is unreachable
    and nothing is cached, copies the sample and says so. A task without a shipped sample (jeopardy) can
    only come from the hub. Returns the manifest entries written.
    """
    if source not in ("auto", "hub", "sample"):
        raise ReferenceBuildError(f"source must be auto, hub or sample, got {source!r}")
    specs = [task(n) for n in names]
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    for spec in specs:
        table = commit = None
        origin = "sample"
        if source in ("auto", "hub"):
            try:
                table, commit = load_from_hub(spec)
                origin = "hub"
            except ReferenceBuildError:
                raise
            except Exception as exc:  # noqa: BLE001 - datasets raises many types (network, missing config, ...)
                reason = one_line(exc)
                if source == "hub" or not _offline_error(exc):
                    raise ReferenceBuildError(f"{spec.name}: cannot load {spec.dataset}: {reason}") from exc
                if spec.sample is None:
                    failures.append(
                        f"{spec.name}: hub unreachable and nothing cached ({reason}); no sample ships"
                    )
                    continue
                echo(
                    f"{spec.name}: hub unreachable and nothing cached; wrote the shipped sample "
                    f"({pq.read_metadata(spec.sample).num_rows} rows) instead"
                )
        if table is None:
            if spec.sample is None:
                failures.append(f"{spec.name}: no sample ships ({spec.licence}); build it with --source hub")
                continue
            table = pq.read_table(spec.sample)
        if table.num_rows == 0:
            raise ReferenceBuildError(f"{spec.name}: the source has no usable rows")
        path = out / f"{spec.name}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table.cast(spec.schema), tmp, compression="zstd")
        entry = {
            "file": path.name,
            "rows": table.num_rows,
            "sha256": _sha256(path),
            "built_from": origin,
            "title": spec.title,
            "source": {
                "dataset": spec.dataset,
                "config": spec.config,
                "split": spec.split,
                "file": spec.data_file,
                "revision": (commit or spec.revision or "main (commit not recorded by the cache)")
                if origin == "hub"
                else None,
            },
            "licence": spec.licence,
            "licence_url": spec.licence_url,
            "prompt": spec.prompt,
            "answer": spec.answer,
            "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        if origin == "sample":
            entry["source"]["sample"] = (
                f"corpus_agents/training/reference_data/{spec.name}.parquet of corpus-agents "
                f"{_version()} (rows drawn from the source; see that folder's README.md)"
            )
        written[spec.name] = entry
        echo(f"{spec.name}: {table.num_rows:,} rows -> {path} ({origin}; {spec.licence})")
    manifest_path = out / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest.update(written)
    with atomic_path(manifest_path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if failures:
        raise ReferenceBuildError("; ".join(failures))
    return written
