"""Pipeline configs: YAML files (pipelines/*.yaml) with `--set section.key=value` overrides, checked on load.

Every constant of a training run is here; an unknown key is an error naming it, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from corpus_agents.errors import CorpusAgentsError


class ConfigError(CorpusAgentsError):
    """A pipeline config that cannot be used (unknown key, bad value, missing file)."""


@dataclass
class ModelConfig:
    preset: str = "tiny"
    seq_len: int = 256
    overrides: dict[str, Any] = field(default_factory=dict)  # LlamaConfig fields


@dataclass
class TokenizerConfig:
    path: str | None = None  # a directory or hub name; None trains a byte-level BPE on a corpus sample
    vocab_size: int = 8192
    sample_docs: int = 20_000


@dataclass
class TrainConfig:
    steps: int = 200
    batch_size: int = 8  # sequences per micro-batch
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    schedule: str = "cosine"  # cosine | wsd
    wsd_decay_fraction: float = 0.2
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    clip: float = 1.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    log_every: int = 10
    num_workers: int = 0  # DataLoader workers of the streaming reader


@dataclass
class RoundsConfig:
    # U: steps between rounds (the first U steps read a random selection). The paper's 1500: probing costs
    # about as much as U = 50 steps of training at 160 probes (benchmarks/results/training.md).
    every: int = 1500
    oversample: float = 1.0  # selection budget = U * tokens per step * oversample


@dataclass
class RewardsConfig:
    method: str = "gradient"  # gradient | one_step
    cosine: bool = False
    projection_dim: int | None = None
    max_tokens: int = 256  # probe documents are truncated to this many tokens
    chunk_size: int = 16  # probes per vmap chunk


@dataclass
class PipelineConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    console: dict[str, Any] = field(default_factory=dict)  # ConsoleConfig fields
    references: list[dict[str, Any]] = field(default_factory=list)  # ReferenceSpec fields
    # name -> {kind, options of `agent add`}; applied by `corpus-agents agent add WS --pipeline FILE`
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown config key {key} (known there: {', '.join(fields)})")
    kwargs = {}
    for name, value in data.items():
        nested = {
            "model": ModelConfig, "tokenizer": TokenizerConfig, "train": TrainConfig,
            "rounds": RoundsConfig, "rewards": RewardsConfig,
        }.get(name) if cls is PipelineConfig else None  # fmt: skip
        kwargs[name] = _build(nested, value or {}, f"{where}.{name}" if where else name) if nested else value
    return cls(**kwargs)


def parse_override(item: str) -> tuple[list[str], Any]:
    """'console.eta_theta=0.5' -> (['console', 'eta_theta'], 0.5); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set needs KEY=VALUE, got {item!r}")
    key, value = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = (
            _merge(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


def read_yaml(path: str | Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping; a `base: FILE` key (relative to this file) is loaded first and overlaid."""
    path = Path(path).resolve()
    if path in seen:
        raise ConfigError(f"config {path} includes itself through `base`")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of sections")
    base = data.pop("base", None)
    return _merge(read_yaml(path.parent / base, (*seen, path)), data) if base else data


def load_config(path: str | Path | None, overrides: list[str] = ()) -> PipelineConfig:
    """Read a YAML pipeline config (or defaults with None) and apply `section.key=value` overrides."""
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: {k} is not a section")
        node[keys[-1]] = value
    return _build(PipelineConfig, data, "")


def agent_specs(agents: dict[str, Any], defaults: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, kind, options) of a config's `agents:` section, in file order; `defaults` are `agent add`'s
    option defaults and name the known options (dashes or underscores). Lists (bins) become `a,b,c`."""
    if not isinstance(agents, dict) or not agents:
        raise ConfigError("the pipeline has no `agents:` section (name: {kind: ..., options of agent add})")
    specs = []
    for name, entry in agents.items():
        if not isinstance(entry, dict) or not entry.get("kind"):
            raise ConfigError(f"agents.{name} needs a `kind` (fasttext, metadata, topic or hf-classifier)")
        options = dict(defaults)
        for key, value in entry.items():
            if key == "kind":
                continue
            option = str(key).replace("-", "_")
            if option not in defaults:
                raise ConfigError(f"unknown config key agents.{name}.{key} (options: {', '.join(defaults)})")
            options[option] = ",".join(str(v) for v in value) if isinstance(value, list) else value
        specs.append((str(name), str(entry["kind"]), options))
    return specs
