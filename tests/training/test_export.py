"""training/export.py: a run's selection exported as Parquet, as datatrove token files (read back by
datatrove's own DatatroveFolderDataset) and as a `datasets` dataset; real token counts; a killed export
finished by a re-run is identical to an uninterrupted one; OUT holding something else is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus_agents.errors import CorpusAgentsError
from corpus_agents.scoring.catalog import Catalog
from corpus_agents.training import export as export_module
from corpus_agents.training.export import ExportTokenizer, export_run, read_token_file
from corpus_agents.training.models import train_tokenizer
from corpus_agents.training.runs import RunPaths, static_selection
from corpus_agents.training.selection import read_snapshot
from tests.helpers import invoke, query


@pytest.fixture(scope="module")
def run(tmp_path_factory, scored_workspace) -> tuple[Path, list[int], dict[int, str], object]:
    """A scored workspace with a static selection `static` whose run directory holds a trained tokenizer
    (as a trained run's does): (workspace, selected doc_ids, their texts, the tokenizer)."""
    ws = scored_workspace(tmp_path_factory.mktemp("export"), 10)
    with Catalog(ws) as cat:
        path = static_selection(cat, "static", 30_000, "topk", {"agents": ["domain", "kind"]}, None)
    doc_ids = sorted(read_snapshot(path)[0]["doc_id"].to_pylist())
    texts = dict(query(ws, "SELECT doc_id, text FROM documents WHERE list_contains(?, doc_id)", [doc_ids]))
    tokenizer = train_tokenizer(list(texts.values()), 400, RunPaths.of(ws, "static").tokenizer)
    return ws, doc_ids, texts, tokenizer


def tokens_of(tokenizer, text: str) -> list[int]:
    """A document as the trainer reads it, tokenised here independently of the export: ids, then EOS."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def export(ws: Path, out: Path, fmt: str, **options) -> export_module.ExportSummary:
    with Catalog(ws) as cat:
        return export_run(cat, "static", None, out, fmt, **options)


def test_parquet_has_the_selected_documents_labels_text_and_token_counts(run, tmp_path: Path) -> None:
    ws, doc_ids, texts, tokenizer = run
    summary = export(ws, tmp_path / "out", "parquet", shard_docs=40)
    written = sorted((tmp_path / "out").glob("part-*.parquet"))
    assert summary.files == len(written) > 1 and summary.documents == len(doc_ids)
    assert [pq.read_metadata(p).num_rows for p in written[:-1]] == [40] * (len(written) - 1)
    exported = pa.concat_tables(pq.read_table(p) for p in written)
    assert exported["doc_id"].to_pylist() == doc_ids
    assert {"text", "domain", "domain_score", "kind", "kind_score"} <= set(exported.column_names)
    assert dict(zip(exported["doc_id"].to_pylist(), exported["text"].to_pylist())) == texts
    expected = [len(tokens_of(tokenizer, texts[d])) for d in doc_ids]
    assert exported["num_tokens"].to_pylist() == expected
    assert summary.tokens == sum(expected) and summary.tokenizer == str(RunPaths.of(ws, "static").tokenizer)


def test_tokens_read_back_by_datatrove_are_exactly_the_selection(run, tmp_path: Path) -> None:
    DatatroveFolderDataset = pytest.importorskip("datatrove.utils.dataset").DatatroveFolderDataset

    ws, doc_ids, texts, tokenizer = run
    out = tmp_path / "tokens"
    summary = export(ws, out, "tokens", shard_tokens=3000, seed=1)
    files = sorted(out.glob("*.ds"))
    assert summary.files == len(files) > 2
    expected, order = [], []
    for path in files:
        tokens, ends, ids = read_token_file(path)
        lengths = [len(tokens_of(tokenizer, texts[int(d)])) for d in ids]
        assert ends.tolist() == np.cumsum(lengths).tolist() and tokens.dtype == np.uint16
        if path != files[-1]:  # a file ends with the document that reaches the count
            assert ends[-1] >= 3000 > ends[-1] - max(lengths)
        meta = path.with_name(path.name + ".metadata").read_text().splitlines()
        assert meta[:2] == [f"{summary.tokenizer}|2", str(ends[-1])]
        order += ids.tolist()
        expected += [t for d in ids for t in tokens_of(tokenizer, texts[int(d)])]
    assert sorted(order) == doc_ids and order != doc_ids  # every document once, shuffled inside files
    assert summary.tokens == len(expected)
    # seq_len 0: windows of one token, so datatrove's reader yields every token of every file, in order
    dataset = DatatroveFolderDataset(str(out), seq_len=0, token_size=2)
    read = np.concatenate([dataset[i]["input_ids"].numpy() for i in range(len(dataset))])
    assert read.tolist() == expected
    # a trainer's context: windows of seq_len + 1 tokens, each file's tail dropped
    dataset = DatatroveFolderDataset(str(out), seq_len=63, token_size=2, return_positions=True)
    first = read_token_file(files[0])[0]
    assert dataset[0]["input_ids"].tolist() == first[:64].tolist()
    assert len(dataset) == sum(len(read_token_file(p)[0]) // 64 for p in files)


def test_a_killed_tokens_export_is_finished_identically_by_a_rerun(
    run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = run[0]
    whole = export(ws, tmp_path / "whole", "tokens", shard_tokens=2000)
    write = export_module._write_token_file
    calls = []

    def dies_at_the_third_file(*args, **kwargs) -> None:
        calls.append(args[1])
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill between two files
        write(*args, **kwargs)

    monkeypatch.setattr(export_module, "_write_token_file", dies_at_the_third_file)
    with pytest.raises(KeyboardInterrupt):
        export(ws, tmp_path / "killed", "tokens", shard_tokens=2000)
    monkeypatch.setattr(export_module, "_write_token_file", write)
    killed = tmp_path / "killed"
    assert (
        len(list(killed.glob("*.ds"))) == 2
        and not json.loads((killed / "export.json").read_text())["complete"]
    )
    (killed / ".part-00002.ds.tmp-1").write_bytes(b"torn")  # what a kill -9 mid-write leaves
    again = export(ws, killed, "tokens", shard_tokens=2000)
    assert again == export_module.ExportSummary(**{**whole.__dict__, "out": killed})
    files = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert sorted(p.name for p in killed.iterdir()) == files
    for name in files:
        assert (killed / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_hf_dataset_loads_from_disk_with_text_doc_ids_and_labels(run, tmp_path: Path) -> None:
    from datasets import load_from_disk

    ws, doc_ids, texts, tokenizer = run
    summary = export(ws, tmp_path / "hf", "hf")
    dataset = load_from_disk(str(tmp_path / "hf"))
    assert dataset["doc_id"] == doc_ids and summary.documents == len(doc_ids) == dataset.num_rows
    assert dict(zip(dataset["doc_id"], dataset["text"])) == texts
    assert {"domain", "domain_score", "kind", "kind_score", "num_tokens"} <= set(dataset.column_names)
    assert (
        summary.tokens
        == sum(len(tokens_of(tokenizer, texts[d])) for d in doc_ids)
        == sum(dataset["num_tokens"])
    )
    assert export(ws, tmp_path / "hf", "hf") == summary  # done already: nothing rewritten
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_out_holding_something_else_is_refused(run, tmp_path: Path) -> None:
    ws = run[0]
    export(ws, tmp_path / "a", "parquet", shard_docs=1000)
    with pytest.raises(CorpusAgentsError, match=r"other settings \(format, shard_docs\)"):
        export(ws, tmp_path / "a", "hf")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(CorpusAgentsError, match="holds no export"):
        export(ws, tmp_path / "b", "tokens")
    assert (tmp_path / "b" / "notes.txt").read_text() == "mine"


def test_tokens_need_a_tokenizer_and_take_4_bytes_beyond_65536_ids(run, tmp_path: Path) -> None:
    ws = run[0]
    with Catalog(ws) as cat:
        static_selection(cat, "bare", 5_000, "topk", {"agents": ["domain", "kind"]}, None)
        with pytest.raises(CorpusAgentsError, match="has no tokenizer.*--tokenizer"):
            export_run(cat, "bare", None, tmp_path / "t", "tokens")
        summary = export_run(cat, "bare", None, tmp_path / "p", "parquet")
        assert summary.tokens is None and "pass --tokenizer" in summary.line()
    sizes = {v: ExportTokenizer(None, "t", 0, v, "").token_bytes for v in (50_257, 65_536, 65_537, 128_256)}
    assert sizes == {50_257: 2, 65_536: 2, 65_537: 4, 128_256: 4}


def test_cli_export_formats(run, tmp_path: Path) -> None:
    ws, doc_ids = run[0], run[1]
    tokenizer = str(RunPaths.of(ws, "static").tokenizer)
    result = invoke(
        "export",
        ws,
        "--run",
        "static",
        "--out",
        tmp_path / "t",
        "--format",
        "tokens",
        "--tokenizer",
        tokenizer,
    )
    assert (
        result.stdout.startswith(f"wrote {len(doc_ids):,} documents (") and "tokens files in" in result.stdout
    )
    result = invoke("export", ws, "--run", "static", "--out", tmp_path / "t", "--format", "hf", expect=2)
    assert "other settings (format, seed, shard_tokens)" in result.stderr


def test_exports_fill_and_then_read_the_workspace_token_cache(
    run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export tokenises through the workspace's token cache (the one training fills): a cold export
    fills it; a warm one tokenises nothing and writes the same bytes."""
    ws = run[0]
    shutil.rmtree(ws / "cache" / "tokens", ignore_errors=True)
    cold = export(ws, tmp_path / "cold", "tokens", shard_tokens=2000)
    assert list((ws / "cache" / "tokens").rglob("rg-*.npz"))

    def no_tokenising(*args, **kwargs):
        raise AssertionError("a warm export tokenised a document")

    monkeypatch.setattr(export_module, "encode_texts", no_tokenising)
    warm = export(ws, tmp_path / "warm", "tokens", shard_tokens=2000)
    assert warm.tokens == cold.tokens and warm.files == cold.files
    for path in sorted((tmp_path / "cold").glob("part-*")):
        assert path.read_bytes() == (tmp_path / "warm" / path.name).read_bytes(), path.name
