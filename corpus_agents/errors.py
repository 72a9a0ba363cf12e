"""Errors a user can hit: each prints as one line naming what failed and what to do (no traceback)."""


class CorpusAgentsError(Exception):
    """Base of user-facing errors; the CLI prints `error: <message>` and exits with status 2."""


class WorkspaceError(CorpusAgentsError):
    """A workspace is missing, busy, or of an incompatible schema version."""


class WorkspaceBusyError(WorkspaceError):
    """Another process holds the workspace (e.g. a training run): read-only reports fall back to its files."""


class CorpusError(CorpusAgentsError):
    """A shard cannot be registered or read (names the shard and the reason)."""


class AgentError(CorpusAgentsError):
    """A problem with an agent's configuration or model."""


class ExecutorError(CorpusAgentsError):
    """An executor cannot run: a missing optional package (Ray) or an unreachable cluster."""


def one_line(exc: BaseException, *, with_type: bool = False) -> str:
    """The first line of an exception's message (library errors often span paragraphs), or its type name
    when the message is empty. `with_type` prefixes the type, for unexpected exceptions whose message alone
    says little (a KeyError's is just the key)."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if with_type else lines[0]
