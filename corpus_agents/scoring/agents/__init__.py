"""Agent registry: kind name -> class. A built-in agent is one file and one line here; agents of other
packages are found through the entry-point group `corpus_agents.agents` (name = kind, value =
"module:Class"), so a new kind needs no fork. A built-in kind wins over an entry point of the same name."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
from collections.abc import Mapping
from typing import Any

from corpus_agents.config import ConfigError, key_path
from corpus_agents.errors import one_line
from corpus_agents.scoring.agents.base import (
    Agent,
    AgentContext,
    AgentError,
    AgentOptions,
    ScoreResult,
)

#: The entry-point group through which other packages add agent kinds.
ENTRY_POINT_GROUP = "corpus_agents.agents"

# kind -> "module:Class", imported lazily so a missing optional dependency only affects its own kind.
REGISTRY: dict[str, str] = {
    "fasttext": "corpus_agents.scoring.agents.fasttext:FastTextAgent",
    "metadata": "corpus_agents.scoring.agents.metadata:MetadataAgent",
    "column": "corpus_agents.scoring.agents.column:ColumnAgent",
    "attributes": "corpus_agents.scoring.agents.attributes:AttributesAgent",
    "topic": "corpus_agents.scoring.agents.topic:TopicAgent",
    "hf-classifier": "corpus_agents.scoring.agents.hf_classifier:HFClassifierAgent",
    "noise": "corpus_agents.scoring.agents.noise:NoiseAgent",
}


@functools.cache
def plugin_kinds() -> dict[str, importlib.metadata.EntryPoint]:
    """Agent kinds that installed packages declare in the entry-point group (built-in names excluded)."""
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return {ep.name: ep for ep in found if ep.name not in REGISTRY}


def kinds() -> list[str]:
    """Every agent kind: the built-in ones, then those of installed packages (each sorted)."""
    return [*sorted(REGISTRY), *sorted(plugin_kinds())]


@functools.cache
def agent_class(kind: str) -> type[Agent]:
    if kind in REGISTRY:
        module, cls = REGISTRY[kind].split(":")
        return getattr(importlib.import_module(module), cls)
    plugins = plugin_kinds()
    if kind not in plugins:
        raise AgentError(f"unknown agent kind {kind!r}; known kinds: {', '.join(kinds())}")
    entry = plugins[kind]
    source = (
        f"agent kind {kind!r} ({entry.value}, from {entry.dist.name if entry.dist else 'an entry point'})"
    )
    try:
        loaded = entry.load()
    except Exception as exc:  # noqa: BLE001 - a broken plug-in is one line, not a traceback
        raise AgentError(f"{source} cannot be loaded: {one_line(exc, with_type=True)}") from None
    if not (isinstance(loaded, type) and issubclass(loaded, Agent)):
        raise AgentError(f"{source} is not a subclass of corpus_agents.scoring.agents.Agent")
    if loaded.kind != kind or not isinstance(getattr(loaded, "options_type", None), type):
        raise AgentError(
            f"{source} must set kind = {kind!r} and options_type (an AgentOptions dataclass); "
            f"it has kind = {loaded.kind!r}"
        )
    return loaded


def make_options(kind: str, values: Mapping[str, Any], where: str = "--") -> AgentOptions:
    """The options of an agent kind from `agent add` flags (`where="--"`) or a pipeline's `agents.NAME`
    entry; options of another kind are one line naming all of them and the kind's own."""
    cls = agent_class(kind).options_type
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    foreign = [key_path(where, str(key)) for key in values if key not in names]
    if foreign:
        own = ", ".join(key_path("--" if where == "--" else "", n) for n in names) or "none"
        verb = "is not an option" if len(foreign) == 1 else "are not options"
        raise ConfigError(f"{', '.join(foreign)} {verb} of agent kind {kind!r} (its options: {own})")
    return cls.from_dict(values, where)


def build_agent(name: str, kind: str, config: dict[str, Any]) -> Agent:
    """Rebuild an agent from its stored config (cheap: the model loads on first use)."""
    return agent_class(kind)(name, config)


__all__ = [
    "ENTRY_POINT_GROUP",
    "REGISTRY",
    "Agent",
    "AgentContext",
    "AgentError",
    "AgentOptions",
    "ScoreResult",
    "agent_class",
    "build_agent",
    "kinds",
    "make_options",
    "plugin_kinds",
]
