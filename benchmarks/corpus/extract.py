"""Turning the files of unpacked packages into documents: text extraction (one reader per file format) and
document splitting.

Each reader takes a file and yields `(kind, units)`: `kind` names the file type (it goes into `meta.kind`),
`units` are pieces of text that must not be cut (paragraphs, dictionary entries, fortune cookies, chapters);
`pack_units` then groups consecutive units into documents of a few hundred to a few thousand characters,
cutting only units longer than the longest document. `split_documents` does the same for the plain text of
one file, cut at paragraph breaks.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import json
import re
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from corpus.fetch import SourceError

MAX_CHARS = 8000
MIN_CHARS = 100
_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# ---------------------------------------------------------------------------------------------- plain text


class _HTMLText(HTMLParser):
    """Crude HTML to text: drops script/style/navigation, puts blank lines between block elements."""

    BLOCKS = {
        "p",
        "div",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "li",
        "pre",
        "tr",
        "table",
        "dd",
        "dt",
        "section",
    }
    SKIP = {"script", "style", "head", "nav", "footer"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.SKIP:
            self.skip += 1
        elif tag in self.BLOCKS:
            self.out.append("\n\n")
            self.pre += tag == "pre"
        elif tag == "br":
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCKS:
            self.out.append("\n\n")
            self.pre -= tag == "pre" and self.pre > 0

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_to_text(markup: str) -> str:
    parser = _HTMLText()
    parser.feed(markup)
    parser.close()
    return html.unescape("".join(parser.out))


_GROFF_ESCAPES = re.compile(r"\\f(\[[^\]]*\]|\(..|.)|\\\(..|\\\*(\(..|\[[^\]]*\]|.)|\\[&|^%]")
_GROFF_TEXT_MACROS = {".SH", ".SS", ".B", ".I", ".BR", ".BI", ".IR", ".IB", ".RB", ".RI", ".IP", ".TP", ".TH"}


def groff_to_text(source: str) -> str:
    """Crude man page to text: keeps text lines and the arguments of font/heading macros."""
    lines = []
    for line in source.splitlines():
        if line.startswith(('.\\"', "'\\\"")):
            continue
        if line.startswith((".", "'")):
            macro, _, args = line.partition(" ")
            if macro in (".PP", ".LP", ".P", ".sp", ".SH", ".SS"):
                lines.append("")
            if macro not in _GROFF_TEXT_MACROS:
                continue
            line = args.replace('"', "")
        line = _GROFF_ESCAPES.sub("", line).replace("\\-", "-").replace("\\e", "\\")
        lines.append(line)
    return "\n".join(lines)


def file_text(path: Path) -> str:
    """The prose of one packaged file, decoded as UTF-8 (invalid bytes replaced)."""
    data = path.read_bytes()
    name = path.name
    if name.endswith(".gz"):
        data = gzip.decompress(data)
        name = name[:-3]
    text = data.decode("utf-8", errors="replace")
    if name.endswith(".html"):
        return html_to_text(text)
    if "/man/man" in str(path):
        return groff_to_text(text)
    return text


def installed_file_text(path: Path) -> str:
    """The text of a file installed on this machine (gzip undone, groff stripped from man pages, HTML kept as
    it is); "" for binary or unreadable files."""
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile):
        return ""
    if b"\0" in data[:4096]:
        return ""
    text = data.decode("utf-8", errors="replace")
    return groff_to_text(text) if "/usr/share/man/" in str(path) else text


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
    """Documentation, code and logs: HTML and man pages to text (`file_text`), paragraphs as units."""
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


def pack_units(units: list[str], rng: np.random.Generator, *, cut_alone: bool = True) -> Iterator[str]:
    """Group consecutive units into documents whose lengths follow a log-normal around 1,200 characters
    (200..5000); a unit longer than MAX_CHARS is cut at whitespace. Its pieces are documents of their own
    (`cut_alone`), or, as the documentation corpora have always cut them, yielded while the document being
    packed stays open, so that those corpora keep the documents their results were measured on."""
    target = target_length(rng)
    current: list[str] = []
    size = 0
    for unit in units:
        while len(unit) > MAX_CHARS:
            cut = unit.rfind(" ", 0, MAX_CHARS)
            cut = cut if cut > MAX_CHARS // 2 else MAX_CHARS
            if current and cut_alone:
                yield "\n\n".join(current)
                current, size = [], 0
            yield unit[:cut]
            unit = unit[cut:].lstrip()
        current.append(unit)
        size += len(unit) + 2
        if size >= target:
            yield "\n\n".join(current)
            current, size, target = [], 0, target_length(rng)
    if current:
        yield "\n\n".join(current)


def split_documents(text: str, rng: np.random.Generator) -> list[str]:
    """The documents of one file's text: its paragraphs packed as `pack_units(cut_alone=False)` does, those
    under MIN_CHARS (stripped) dropped."""
    paragraphs = [p.strip("\n") for p in _PARAGRAPH.split(text)]
    docs = pack_units([p for p in paragraphs if p.strip()], rng, cut_alone=False)
    return [d for d in docs if len(d.strip()) >= MIN_CHARS]


def source_rng(name: str, seed: int) -> np.random.Generator:
    """The generator of one source's document lengths: a stream of its own, so adding a source changes the
    documents of no other."""
    return np.random.default_rng([seed, int(hashlib.md5(name.encode()).hexdigest()[:8], 16)])


def target_length(rng: np.random.Generator) -> int:
    """A document length drawn from the corpora's log-normal: median 1,200 characters, clipped to 200..5000."""
    return int(np.clip(rng.lognormal(np.log(1200), 0.8), 200, 5000))
