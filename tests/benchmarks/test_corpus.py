"""The benchmark corpus builder (benchmarks/corpus/): readers, splitting and packing, trimming, and builds of
each preset over packages already in the cache (nothing is downloaded)."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

from corpus import build, debian_docs, extract, installed, multidomain  # noqa: E402
from corpus import sources as sources_mod  # noqa: E402
from environment import command_line, shown  # noqa: E402


def test_fortune_cookies_are_units(tmp_path):
    path = tmp_path / "wisdom"
    path.write_text("First cookie\n  -- Someone\n%\nSecond\n\ncookie\n%\n%\nThird\n")
    [(kind, units)] = list(extract.read_fortune(path))
    assert kind == "fortune"
    assert units == ["First cookie\n  -- Someone", "Second\n\ncookie", "Third"]


def test_dictd_entries_follow_the_index_in_file_order(tmp_path):
    body = b"00-database-info\nThis file was converted\n\nabacus\n  n: a counting frame\n"
    (tmp_path / "x.dict.dz").write_bytes(gzip.compress(body))
    second = body.index(b"abacus")
    b64 = extract._DICTD_B64

    def code(n: int) -> str:
        out = ""
        while True:
            out = b64[n % 64] + out
            n //= 64
            if not n:
                return out

    index = f"abacus\t{code(second)}\t{code(len(body) - second)}\n00-database-info\tA\t{code(second)}\n"
    (tmp_path / "x.index").write_text(index)
    [(kind, units)] = list(extract.read_dictd(tmp_path / "x.dict.dz"))
    assert kind == "dictionary-entry"
    assert units == ["00-database-info\nThis file was converted", "abacus\n  n: a counting frame"]


def test_pack_units_keeps_units_whole_and_cuts_only_oversized_ones():
    rng = np.random.default_rng(0)
    units = [f"unit {i} " + "word " * 50 for i in range(200)] + ["x " * 9000]
    docs = list(extract.pack_units(units, rng))
    assert all(len(d) <= extract.MAX_CHARS for d in docs)
    rebuilt = "\n\n".join(docs[:-3])
    assert all(u in rebuilt for u in units[:150])  # no unit is cut across documents
    assert "".join(d.replace(" ", "") for d in docs).count("x") == 9000


def test_kind_of_names_the_file_type():
    assert extract.kind_of("/usr/share/javascript/jquery/jquery.min.js") == "javascript-minified"
    assert extract.kind_of("/usr/share/doc/x/html/genindex.html") == "html-index"
    assert extract.kind_of("/usr/share/emacs/28.2/etc/tutorials/TUTORIAL.pl") == "tutorial"
    assert extract.kind_of("/usr/share/doc/glibc-doc/ChangeLog.18.gz") == "changelog"
    assert extract.kind_of("/usr/share/doc/base-files/copyright") == "copyright"


def test_water_level_trims_only_the_largest_sources():
    assert multidomain._water_level([1, 2, 10, 20], 13) == 5
    assert multidomain._water_level([1, 2, 3], 100) == float("inf")


def _fake_debian(cache: Path, package: str, files: dict[str, str]) -> None:
    root = cache / "extracted" / package
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / ".done").write_text(f"{package}_1.0-1_all.deb")


def test_build_writes_shuffled_shards_and_a_manifest_and_is_cached(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    prose = "\n\n".join(f"Paragraph {i}. " + "It was a dark and stormy night. " * 8 for i in range(300))
    _fake_debian(cache, "novels", {"usr/share/novels/a.txt": prose})
    cookies = "\n%\n".join(
        f"Cookie number {i}: a stitch in time saves nine, says the proverb." for i in range(400)
    )
    _fake_debian(
        cache, "cookies", {"usr/share/games/fortunes/misc": cookies, "usr/share/games/fortunes/misc.dat": "x"}
    )
    Source = sources_mod.Source
    fake = [
        Source("novels", "fiction", "novels", r"\.txt$"),
        Source("cookies", "quotes", "cookies", r"/fortunes/[^/]+$", reader="fortune"),
    ]
    monkeypatch.setattr(multidomain, "SOURCES", fake)
    out, results = tmp_path / "corpus", tmp_path / "results"
    argv = [
        "--out",
        str(out),
        "--cache",
        str(cache),
        "--shards",
        "3",
        "--workers",
        "1",
        "--results",
        str(results),
    ]
    build.main([*argv, "--target-mb", "0.05"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["domains"]) == {"fiction", "quotes"}
    assert manifest["sources"]["novels"]["packages"] == {"novels": "1.0-1"}
    assert 0.04 < manifest["text_mb"] <= 0.05
    assert manifest["sources"]["cookies"]["kinds"] == {"fortune": manifest["sources"]["cookies"]["documents"]}
    table = pq.read_table([out / s["file"] for s in manifest["shards"]])
    assert table.column_names == ["text", "domain", "source", "meta"]
    assert len(table) == manifest["documents"]
    assert set(table.column("domain").to_pylist()[:20]) == {"fiction", "quotes"}  # shuffled across domains
    assert json.loads((results / "corpus.json").read_text())["documents"] == manifest["documents"]
    assert "| fiction |" in (results / "corpus.md").read_text()

    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    build.main([*argv, "--target-mb", "0.05"])  # up to date: nothing rewritten
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    build.main([*argv, "--target-mb", "10"])  # everything fits: both sources whole, same documents as cached
    again = json.loads((out / "manifest.json").read_text())
    assert again["text_mb"] == again["available_text_mb"] > manifest["text_mb"]
    assert not list(tmp_path.glob(".corpus.*"))  # no temporary directories left behind


def test_build_refuses_a_directory_it_did_not_write(tmp_path):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="holds no manifest.json of a corpus"):
        build.main(["--out", str(out), "--cache", str(tmp_path / "cache"), "--results", str(tmp_path / "r")])


def test_split_documents_keeps_the_document_open_across_a_cut_paragraph():
    short, long = "Short paragraph " * 4, "word " * 2000  # the long one is over MAX_CHARS
    alone = list(extract.pack_units([short.strip(), long], np.random.default_rng(0)))
    assert alone[0] == short.strip()  # the documents since the last one are closed before the cut
    docs = extract.split_documents(f"{short}\n\n{long}", np.random.default_rng(0))
    assert docs[0].startswith("word ") and len(docs[0]) <= extract.MAX_CHARS
    assert any(
        d.startswith(short.strip()) and d.rstrip().endswith("word") for d in docs[1:]
    )  # joined with the tail
    assert all(len(d.strip()) >= extract.MIN_CHARS for d in docs)


def test_debian_docs_cuts_each_matching_file_and_caches_the_corpus(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    text = "\n\n".join(f"Section {i}. " + "The manual explains the option in detail. " * 6 for i in range(60))
    html = (
        "<html><head><title>x</title></head><body><p>" + "Web page prose here. " * 20 + "</p></body></html>"
    )
    _fake_debian(cache, "tool-doc", {"usr/share/doc/a.txt": text, "usr/share/doc/b.html": html, "c.png": "x"})
    monkeypatch.setattr(
        debian_docs,
        "DEBIAN_DOCS",
        [sources_mod.Source("tool-doc", "technical_docs", "tool-doc", r"\.(txt|html)$")],
    )
    info = debian_docs.build(cache, shards=2, row_group_rows=16, log=False)
    rng = extract.source_rng("tool-doc", 0)
    expected = extract.split_documents(text, rng) + extract.split_documents(extract.file_text(
        cache / "extracted" / "tool-doc" / "usr/share/doc/b.html"), rng)  # fmt: skip
    table = pq.read_table(info.shards)
    assert sorted(table.column("text").to_pylist()) == sorted(expected)
    assert info.documents == len(expected) and info.per_source["tool-doc"]["documents"] == len(expected)
    assert [Path(s).name for s in info.shards] == ["shard-00000.parquet", "shard-00001.parquet"]
    assert debian_docs.build(cache, shards=2, row_group_rows=16, log=False) == info  # found in the cache
    fewer = debian_docs.build(cache, docs=5, shards=1, log=False)
    assert fewer.documents == 5 and fewer.directory != info.directory


def test_installed_cuts_files_up_to_the_budget_per_source(tmp_path, monkeypatch):
    files = {}
    for source in ("python-stdlib", "man-pages"):
        files[source] = []
        for i in range(5):
            path = tmp_path / source / f"f{i}.txt"
            path.parent.mkdir(exist_ok=True)
            path.write_text("\n\n".join(f"{source} file {i} paragraph {j}. " * 5 for j in range(40)))
            files[source].append(path)
    (tmp_path / "binary.bin").write_bytes(b"\0\1\2" * 100)
    files["man-pages"].append(tmp_path / "binary.bin")
    monkeypatch.setattr(installed, "source_files", lambda: files)
    out = installed.build(tmp_path / "cache", mb=0.005, shards=2)
    counts = json.loads((out / "corpus.json").read_text())
    table = pq.read_table(sorted(out.glob("shard-*.parquet")))
    assert len(table) == counts["documents"] == counts["python-stdlib"] + counts["man-pages"]
    per_source = {
        s: sum(len(t.encode()) for t, x in zip(*table.to_pydict().values()) if x == s) for s in files
    }
    assert all(5_000 <= size < 5_000 + 6 * 1_300 for size in per_source.values())  # stops past the budget
    assert installed.build(tmp_path / "cache", mb=0.005, shards=2) == out


def test_the_command_line_takes_each_preset_and_refuses_the_options_of_another(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as refused:
        build.main(["installed", "--docs", "5"])
    assert refused.value.code == 2 and "installed takes no --docs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build.main(["--target-mb", "5"])
    assert "needs --out DIR" in capsys.readouterr().err
    cache = tmp_path / "cache"
    _fake_debian(
        cache,
        "pkg",
        {"doc.txt": "\n\n".join("A paragraph of some length, for a document. " * 4 for _ in range(50))},
    )
    monkeypatch.setattr(
        debian_docs, "DEBIAN_DOCS", [sources_mod.Source("pkg", "technical_docs", "pkg", r"\.txt$")]
    )
    build.main(["debian-docs", "--cache", str(cache), "--docs", "3", "--shards", "1"])
    printed = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after the per-package line
    assert printed["documents"] == 3 and printed["per_source"]["pkg"]["documents"] == 3


def test_results_name_this_machines_directories_portably(tmp_path):
    repo, home = BENCH.parent, Path.home()
    assert shown(f"see {repo}/benchmarks/x.py and {home}/.cache/c") == "see benchmarks/x.py and ~/.cache/c"
    line = command_line(BENCH / "corpus" / "build.py", ["--out", str(home / "a b"), "--seed", "1"])
    assert line == "python benchmarks/corpus/build.py --out ~/'a b' --seed 1"
