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
