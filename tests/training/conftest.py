"""Fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def workspace(tmp_path: Path, scored_workspace) -> tuple[Path, Path]:
    """A scored workspace (domain + kind agents) and a pipeline config with one reference task."""
    ws = scored_workspace(tmp_path, 60)
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "references:\n  - {name: docs, path: '{workspace}/reference.parquet', prompt: '{prompt}', answer: '{answer}'}\n"
    )
    return ws, config
