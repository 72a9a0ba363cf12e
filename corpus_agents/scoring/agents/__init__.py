"""Agent registry: kind name -> class. Adding an agent is one file and one line here."""

from __future__ import annotations

import importlib
from typing import Any

from corpus_agents.scoring.agents.base import Agent, AgentContext, AgentError, ScoreResult

# kind -> "module:Class", imported lazily so a missing optional dependency only affects its own kind.
REGISTRY: dict[str, str] = {
    "fasttext": "corpus_agents.scoring.agents.fasttext:FastTextAgent",
    "metadata": "corpus_agents.scoring.agents.metadata:MetadataAgent",
    "topic": "corpus_agents.scoring.agents.topic:TopicAgent",
    "hf-classifier": "corpus_agents.scoring.agents.hf_classifier:HFClassifierAgent",
}


def agent_class(kind: str) -> type[Agent]:
    if kind not in REGISTRY:
        raise AgentError(f"unknown agent kind {kind!r}; known kinds: {', '.join(sorted(REGISTRY))}")
    module, cls = REGISTRY[kind].split(":")
    return getattr(importlib.import_module(module), cls)


def build_agent(name: str, kind: str, config: dict[str, Any]) -> Agent:
    """Rebuild an agent from its stored config (cheap: the model loads on first use)."""
    return agent_class(kind)(name, config)


__all__ = [
    "Agent",
    "AgentContext",
    "AgentError",
    "REGISTRY",
    "ScoreResult",
    "agent_class",
    "build_agent",
]
