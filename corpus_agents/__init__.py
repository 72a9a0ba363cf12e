"""corpus-agents: multi-agent collaborative data selection for language-model pretraining.

The Python API: `corpus_agents.open(path)` gives a `Workspace` (see `corpus_agents.workspace`). The names
below are imported on first use, so `import corpus_agents` stays cheap (no DuckDB, no torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> "module:attribute", imported lazily
_EXPORTS = {
    "open": "corpus_agents.workspace:open_workspace",
    "Workspace": "corpus_agents.workspace:Workspace",
    "WorkspaceStatus": "corpus_agents.workspace:WorkspaceStatus",
    "AgentStatus": "corpus_agents.workspace:AgentStatus",
    "AgentInfo": "corpus_agents.workspace:AgentInfo",
    "CorpusSize": "corpus_agents.workspace:CorpusSize",
    "CorpusAgentsError": "corpus_agents.errors:CorpusAgentsError",
    "WorkspaceError": "corpus_agents.errors:WorkspaceError",
    "WorkspaceBusyError": "corpus_agents.errors:WorkspaceBusyError",
}

__all__ = [
    "__version__",
    "open",
    "Workspace",
    "WorkspaceStatus",
    "AgentStatus",
    "AgentInfo",
    "CorpusSize",
    "CorpusAgentsError",
    "WorkspaceError",
    "WorkspaceBusyError",
]

if TYPE_CHECKING:
    from corpus_agents.errors import CorpusAgentsError, WorkspaceBusyError, WorkspaceError
    from corpus_agents.workspace import (
        AgentInfo,
        AgentStatus,
        CorpusSize,
        Workspace,
        WorkspaceStatus,
    )
    from corpus_agents.workspace import open_workspace as open


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'corpus_agents' has no attribute {name!r}")
    module, attribute = _EXPORTS[name].split(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
