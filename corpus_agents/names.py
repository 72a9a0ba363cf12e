"""The names users give things that become SQL columns or file paths: agent names and run ids.

One check each, used by the CLI (click parameter types, so a bad name is click's one line and exit 2) and
by the library before anything is fitted or written: a name can never reach outside the workspace (`/`,
`..`, an absolute path) or be read as markup or SQL.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from corpus_agents.errors import AgentError, CorpusAgentsError

#: Agent names are SQL columns of `doc_labels` (`<agent>` and `<agent>_score`) and folders of parts/models.
AGENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: Run ids are folders of WS/runs and keys of the runs tables: `demo`, `paper-tasks`, `lr3e-4.seed0`.
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


class RunIdError(CorpusAgentsError):
    """A run id that is not a plain name (it would be a path or markup)."""


def check_agent_name(name: str) -> str:
    """`name` if it can name an agent (an identifier of at most 64 characters), else AgentError."""
    if not isinstance(name, str) or not AGENT_NAME.fullmatch(name):
        raise AgentError(
            f"agent name {name!r} must be an identifier (letters, digits, _; at most 64), used as a column"
        )
    return name


def check_run_id(run_id: str) -> str:
    """`run_id` if it can name a run (letters, digits, `_`, `-`, `.`, starting with a letter or digit; at
    most 100 characters), else RunIdError."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise RunIdError(
            f"run id {run_id!r} must be a plain name: letters, digits, _, - and ., starting with a letter "
            f"or digit (at most 100 characters)"
        )
    return run_id


def inside(directory: str | os.PathLike, path: str | os.PathLike) -> Path:
    """`path` resolved, if it lies inside `directory` (resolved too); else CorpusAgentsError. The last line
    of defence for a file named after a user's input (a model file, a run directory)."""
    root = Path(directory).resolve()
    resolved = Path(path).resolve()
    if resolved != root and root not in resolved.parents:
        raise CorpusAgentsError(f"{path} is outside {root}; refusing to write there")
    return resolved
