"""Agent registry: kind name -> class. Adding an agent is one file and one line here."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

from corpus_agents.config import ConfigError, key_path
from corpus_agents.scoring.agents.base import (
    Agent,
    AgentContext,
    AgentError,
    AgentOptions,
    ScoreResult,
)

# kind -> "module:Class", imported lazily so a missing optional dependency only affects its own kind.
REGISTRY: dict[str, str] = {
    "fasttext": "corpus_agents.scoring.agents.fasttext:FastTextAgent",
    "metadata": "corpus_agents.scoring.agents.metadata:MetadataAgent",
    "topic": "corpus_agents.scoring.agents.topic:TopicAgent",
    "hf-classifier": "corpus_agents.scoring.agents.hf_classifier:HFClassifierAgent",
    "noise": "corpus_agents.scoring.agents.noise:NoiseAgent",
}


def agent_class(kind: str) -> type[Agent]:
    if kind not in REGISTRY:
        raise AgentError(f"unknown agent kind {kind!r}; known kinds: {', '.join(sorted(REGISTRY))}")
    module, cls = REGISTRY[kind].split(":")
    return getattr(importlib.import_module(module), cls)


def make_options(kind: str, values: Mapping[str, Any], where: str = "--") -> AgentOptions:
    """The options of an agent kind from `agent add` flags (`where="--"`) or a pipeline's `agents.NAME`
    entry; an option of another kind is one line naming it and the kind."""
    cls = agent_class(kind).options_type
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            own = ", ".join(key_path("--" if where == "--" else "", n) for n in names)
            raise ConfigError(
                f"{key_path(where, key)} is not an option of agent kind {kind!r} (its options: {own})"
            )
    return cls.from_dict(values, where)


def build_agent(name: str, kind: str, config: dict[str, Any]) -> Agent:
    """Rebuild an agent from its stored config (cheap: the model loads on first use)."""
    return agent_class(kind)(name, config)


__all__ = [
    "Agent",
    "AgentContext",
    "AgentError",
    "AgentOptions",
    "REGISTRY",
    "ScoreResult",
    "agent_class",
    "build_agent",
    "make_options",
]
