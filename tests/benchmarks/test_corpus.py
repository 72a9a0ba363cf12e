"""The multi-domain benchmark corpus builder (benchmarks/corpus/): readers, packing, trimming, and a build over
packages already in the cache (nothing is downloaded)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

CORPUS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "corpus"
_spec = importlib.util.spec_from_file_location("benchmark_corpus_build", CORPUS_DIR / "build.py")
build = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = build  # its worker function is pickled by module name
_spec.loader.exec_module(build)  # puts benchmarks/corpus on sys.path for its own imports
extract = sys.modules["extract"]
sources_mod = sys.modules["sources"]


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
    assert build._water_level([1, 2, 10, 20], 13) == 5
    assert build._water_level([1, 2, 3], 100) == float("inf")


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
    monkeypatch.setattr(build, "SOURCES", fake)
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
