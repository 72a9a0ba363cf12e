"""What every benchmark records beside its figures: the machine and the versions (with the git revision)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM, kernel and the load average now (the machines are shared)."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), ""
    )
    mem = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
    return {
        "cpu_model": model or platform.processor(),
        "cores": os.cpu_count(),
        "ram_gb": round(int(mem.split()[1]) / 1024**2, 1),
        "kernel": platform.release(),
        "loadavg": float(Path("/proc/loadavg").read_text().split()[0]),
    }


def versions(*dists: str, names: dict[str, str] | None = None) -> dict[str, str]:
    """Python's and the given distributions' versions (`names` maps a shown name to a distribution), and the
    git revision of the checkout (`+dirty` with uncommitted changes)."""
    out = {"python": platform.python_version()}
    for name, dist in [*((d, d) for d in dists), *(names or {}).items()]:
        try:
            out[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    out["git"] = rev.stdout.strip() + ("+dirty" if dirty.strip() else "")
    return out


def shown(text: str) -> str:
    """Text for a results file with this machine's directories named portably: paths in the repository
    relative to it, and `$VIRTUAL_ENV/`, `$TMPDIR/` and `~/` for the others (results never hold the
    absolute paths of one machine)."""
    prefixes = [(REPO, "")]
    if sys.prefix != sys.base_prefix:
        prefixes.append((Path(sys.prefix), "$VIRTUAL_ENV/"))
    prefixes += [(Path(tempfile.gettempdir()), "$TMPDIR/"), (Path.home(), "~/")]
    for directory, name in prefixes:
        text = text.replace(f"{directory.resolve()}/", name)
    return text


def shown_path(path: str | os.PathLike) -> str:
    """A path as results record it (see `shown`)."""
    return shown(str(Path(path).expanduser().resolve()))


def command_line(script: str | os.PathLike, argv: list[str] | None = None) -> str:
    """How a benchmark was run, for its results: `python SCRIPT ARGS` with the script relative to the
    repository and the arguments that are absolute paths shown by `shown_path`."""
    words = ["python", shown_path(script)]
    for arg in sys.argv[1:] if argv is None else argv:
        arg = shown_path(arg) if arg.startswith("/") else arg
        head, _, rest = arg.partition("/")
        if rest and head in ("~", "$TMPDIR", "$VIRTUAL_ENV"):  # left unquoted, so that a shell expands it
            words.append(f"{head}/{shlex.quote(rest)}")
        else:
            words.append(shlex.quote(arg))
    return " ".join(words)


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def cpu_idle(interval: float = 1.0) -> float:
    """Fraction of all cores' time idle over `interval` seconds (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        return fields[3] + fields[4], sum(fields)

    idle0, total0 = sample()
    time.sleep(interval)
    idle1, total1 = sample()
    return (idle1 - idle0) / max(1, total1 - total0)
