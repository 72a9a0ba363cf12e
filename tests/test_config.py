"""Pipeline configs: every shipped YAML loads, `base` inheritance, `--set` overrides, unknown keys rejected."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus_agents.config import ConfigError, load_config

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


@pytest.mark.parametrize(
    "path", sorted(PIPELINES.rglob("*.yaml")), ids=lambda p: str(p.relative_to(PIPELINES))
)
def test_every_shipped_pipeline_loads(path: Path) -> None:
    config = load_config(path)
    assert config.references and config.rounds.every > 0


def test_ablations_change_only_what_they_say() -> None:
    demo = load_config(PIPELINES / "demo.yaml")
    fixed = load_config(PIPELINES / "ablations" / "fixed-weights.yaml")
    assert fixed.console == {**demo.console, "fixed_weights": True}
    assert fixed.train == demo.train and fixed.references == demo.references
    assert load_config(PIPELINES / "ablations" / "quality-only.yaml").console["agents"] == ["quality"]
    assert load_config(PIPELINES / "ablations" / "one-step.yaml").rewards.method == "one_step"


def test_overrides_are_parsed_as_yaml() -> None:
    config = load_config(
        PIPELINES / "demo.yaml", ["train.steps=7", "console.eta_theta=0.25", "rewards.cosine=true"]
    )
    assert config.train.steps == 7 and config.console["eta_theta"] == 0.25 and config.rewards.cosine is True


def test_unknown_keys_and_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown config key train.stepz"):
        load_config(None, ["train.stepz=3"])
    with pytest.raises(ConfigError, match="unknown config key trian"):
        load_config(None, ["trian.steps=3"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["train.steps"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(loop)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
