"""The repository explains itself: every `docs/...` citation and Markdown link resolves to a file and a
heading, every `tests/...py::test` citation to a test, and no file holds an absolute path of one machine (or a
path outside the repository)."""

from __future__ import annotations

import os
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {
    ".git",
    ".venv",
    "__pycache__",
    "build",
    "dist",
    ".pytest_cache",
    ".ruff_cache",
    "demo-workspace",
}
BINARY = {".png", ".parquet", ".bin", ".ftz", ".duckdb", ".safetensors", ".pt", ".whl", ".gz", ".zip"}
CITING = {".py", ".md", ".yaml", ".yml", ".toml"}

#: A `docs/<file>.md` citation, with or without `#anchor`, also as `../docs/...`; not `mydocs/...`.
DOC_REF = re.compile(r"(?<![\w-])docs/([\w.-]+\.md)(?:#([\w-]+))?")
#: A `tests/<path>.py` citation, optionally with `::test_name`.
TEST_REF = re.compile(r"(?<![\w/.-])tests/([\w/]+\.py)(?:::(\w+))?")
MD_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
#: Absolute paths that exist on one machine only, and paths that leave the repository for a sibling.
MACHINE_PATHS = {
    "a /work/ or /root/ path": re.compile(r"(?<![\w.~$/:-])/(?:work|root)/"),
    "a home directory": re.compile(r"(?<![\w.~$/:-])/(?:home|Users)/[\w.-]+/"),
    "a Windows user directory": re.compile(r"\b[A-Za-z]:\\+Users\\+"),
    "a temporary directory of one run": re.compile(r"/tmp/(?:pytest-of-[\w.-]+|[\w.-]+-[a-z0-9_]{8})/"),
    "the ../shared directory beside the checkout": re.compile(r"\.\./shared\b"),
}
#: Files allowed to contain what MACHINE_PATHS finds, and why.
ALLOWED: dict[str, str] = {
    "tests/test_docs.py": "this test: it names the patterns it looks for",
}


def tree_files() -> list[Path]:
    """The repository's files: git's tracked and untracked-but-not-ignored ones, else a walk of the tree."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout.decode()
        names = [n for n in out.split("\0") if n]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked sdist)
        names = []
        for root, dirs, files in os.walk(REPO):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
            names += [os.path.relpath(os.path.join(root, f), REPO) for f in files]
    paths = [REPO / n for n in names]
    return sorted(p for p in paths if p.is_file() and p.suffix.lower() not in BINARY)


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (not `-` or `_`), spaces to dashes."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """The anchors of a Markdown file's headings (code blocks skipped; repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in text(path).splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


def where(path: Path, content: str, offset: int) -> str:
    return f"{path.relative_to(REPO)}:{content.count(chr(10), 0, offset) + 1}"


def test_slug_follows_github() -> None:
    assert (
        slug("Version 2 console (planned, not yet implemented)")
        == "version-2-console-planned-not-yet-implemented"
    )
    assert slug("One writer: the workspace lock") == "one-writer-the-workspace-lock"
    assert slug("Resume after kill -9") == "resume-after-kill--9"
    assert slug("`corpus_agents/` and [docs](x.md)") == "corpus_agents-and-docs"


def test_every_docs_citation_names_an_existing_file_and_heading() -> None:
    problems, cited = [], 0
    for path in tree_files():
        if path.suffix.lower() not in CITING:
            continue
        content = text(path)
        for match in DOC_REF.finditer(content):
            cited += 1
            name, anchor = match.groups()
            target = REPO / "docs" / name
            if not target.is_file():
                problems.append(f"{where(path, content, match.start())}: docs/{name} does not exist")
            elif anchor and anchor not in anchors(target):
                problems.append(
                    f"{where(path, content, match.start())}: docs/{name} has no heading #{anchor}"
                )
    assert cited >= 10, "the code and READMEs cite docs/algorithm.md and docs/architecture.md"
    assert not problems, "\n".join(problems)


def test_every_tests_citation_names_an_existing_test() -> None:
    """Tests that pin a guarantee are cited by path and name (as pytest prints them): moving or renaming
    one must update its citations."""
    problems, cited = [], 0
    for path in tree_files():
        if path.suffix.lower() not in CITING:
            continue
        content = text(path)
        for match in TEST_REF.finditer(content):
            cited += 1
            name, test = match.groups()
            target = REPO / "tests" / name
            if not target.is_file():
                problems.append(f"{where(path, content, match.start())}: tests/{name} does not exist")
            elif test and not re.search(rf"^def {test}\(", text(target), re.MULTILINE):
                problems.append(f"{where(path, content, match.start())}: tests/{name} has no {test}")
    assert cited >= 10, "docs/architecture.md cites the tests that pin its guarantees"
    assert not problems, "\n".join(problems)


def test_markdown_links_to_files_and_headings_resolve() -> None:
    problems = []
    for path in tree_files():
        if path.suffix.lower() != ".md":
            continue
        content = text(path)
        for match in MD_LINK.finditer(content):
            link = match.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", link):  # https:, mailto:, ...
                continue
            file_part, _, anchor = link.partition("#")
            target = (path.parent / file_part).resolve() if file_part else path
            if not target.exists():
                problems.append(f"{where(path, content, match.start())}: {link} does not exist")
            elif anchor and target.suffix == ".md" and anchor not in anchors(target):
                problems.append(f"{where(path, content, match.start())}: {link} names no heading")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", sorted(MACHINE_PATHS))
def test_no_file_holds_a_path_of_one_machine(name: str) -> None:
    pattern = MACHINE_PATHS[name]
    found = []
    for path in tree_files():
        if str(path.relative_to(REPO)) in ALLOWED:
            continue
        content = text(path)
        found += [f"{where(path, content, m.start())}: {m.group(0)}" for m in pattern.finditer(content)]
    assert not found, f"{name} in:\n" + "\n".join(found[:50])


def test_the_patterns_find_what_they_are_meant_to() -> None:
    """The grep above cannot pass by matching nothing: each pattern finds its kind of path and skips URLs."""
    hits = {
        "a /work/ or /root/ path": ["cd /work/main", "'/root/.cache/x'"],
        "a home directory": ["/home/alice/data", "`/Users/bob/x`"],
        "a Windows user directory": ["C:\\Users\\carol\\x"],
        "a temporary directory of one run": ["/tmp/corpus-agents-bench-ymrj21ft/a", "/tmp/pytest-of-root/x"],
        "the ../shared directory beside the checkout": ["path: ../shared/data/x.parquet"],
    }
    misses = ["https://example.org/work/x", "~/.cache/x", "/tmp/bench", "/models/fineweb", "$HOME/x"]
    for name, examples in hits.items():
        for example in examples:
            assert MACHINE_PATHS[name].search(example), (name, example)
    for example in misses:
        assert not any(p.search(example) for p in MACHINE_PATHS.values()), example
