"""corpus-agents: multi-agent collaborative data selection for language-model pretraining."""

__version__ = "0.1.0"
