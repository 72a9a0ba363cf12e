"""Pipeline configs: YAML files (pipelines/*.yaml) with `--set section.key=value` overrides, checked on load.

Every constant of a training run is here, as typed dataclasses. Loading checks every key and value before
any work starts: an unknown key, a value of the wrong type, one outside its range or not among an enum's
choices is one `ConfigError` line naming the full key path (`console.eta_theta`), so a typo never silently
falls back to a default. The same checker builds each agent kind's options (`agents:` and `agent add`).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from corpus_agents.errors import CorpusAgentsError, one_line


class ConfigError(CorpusAgentsError):
    """A pipeline config or agent options that cannot be used (unknown key, bad value, missing file)."""


# ----- the checker --------------------------------------------------------------------------------------
def bounded(default: Any, *, gt: float | None = None, ge: float | None = None, lt: float | None = None,
            le: float | None = None) -> Any:  # fmt: skip
    """A dataclass field whose (numeric) value must lie in a range, checked at load."""
    return field(default=default, metadata={"range": (gt, ge, lt, le)})


def key_path(where: str, name: str) -> str:
    """`where.name`; under `where="--"` (command-line options) the flag `--name-with-dashes`."""
    if where == "--":
        return "--" + name.replace("_", "-")
    return f"{where}.{name}" if where else name


_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")  # PyYAML reads `1e-3` as a string


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build(cls: type, data: Any, where: str) -> Any:
    """A checked instance of dataclass `cls` from a mapping (or a re-checked copy of an instance); `where`
    is the key path of `data`, used in every error message."""
    if isinstance(data, cls):
        data = {f.name: getattr(data, f.name) for f in dataclasses.fields(cls) if f.init}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            known = ", ".join(key_path("--" if where == "--" else "", n) for n in fields)
            raise ConfigError(f"unknown config key {key_path(where, str(key))} (known there: {known})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _check_range(
                _value(_hints(cls)[name], data[name], key_path(where, name)), f, where
            )
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key_path(where, name)} is required")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(where)
    return obj


def _check_range(value: Any, f: dataclasses.Field, where: str) -> Any:
    if "range" not in f.metadata or value is None:
        return value
    tests = ((">", operator.gt), (">=", operator.ge), ("<", operator.lt), ("<=", operator.le))
    for bound, (sign, holds) in zip(f.metadata["range"], tests):
        if bound is not None and not holds(value, bound):
            raise ConfigError(f"{key_path(where, f.name)} must be {sign} {bound}, got {value}")
    return value


def _value(tp: Any, value: Any, key: str) -> Any:
    """`value` checked against the type annotation `tp` (floats accept ints and float strings; lists accept
    a comma-separated string, as `--bins 0,1,2` or `--set agents.x.bins=0,1,2` give them)."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _value(inner, value, key)
    if origin is Literal:
        if isinstance(value, str | bool | int) and value in args:
            return value
        raise ConfigError(f"{key} must be one of {', '.join(map(str, args))}, got {value!r}")
    if isinstance(tp, type) and hasattr(tp, "from_config"):
        return tp.from_config(value, key)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT.match(value.strip()):
            return float(value)
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    if origin is list:
        if isinstance(value, str) and args[0] in (str, int, float):
            value = [v.strip() for v in value.split(",")] if value.strip() else []
            value = [yaml.safe_load(v) if args[0] is not str else v for v in value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_value(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return {str(k): _value(args[1], v, key_path(key, str(k))) for k, v in value.items()}
    raise TypeError(f"config type {tp!r} of {key} is not supported")  # a programming error, not a user's


class Section:
    """Base of the config dataclasses: `from_dict` checks, `to_dict` gives plain YAML/JSON values back."""

    #: The key path a directly built instance is reported under.
    where: typing.ClassVar[str] = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | None = None) -> Any:
        return build(cls, data, cls.where if where is None else where)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Raise ConfigError if a field was set (in Python) to a value the loader would refuse."""
        build(type(self), self, self.where)


# ----- the sections -------------------------------------------------------------------------------------
#: Model sizes: hidden size, layers, attention heads, key/value heads, MLP size. Vocabulary and context
#: come from the run (`tokenizer`, `model.seq_len`).
MODEL_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 384},
    "small": {"hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 4,
              "intermediate_size": 768},
    "125m": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 12,
             "intermediate_size": 2048},
    "373m": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
             "num_key_value_heads": 16, "intermediate_size": 2816},
    "1.3b": {"hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 16,
             "num_key_value_heads": 16, "intermediate_size": 5632},
}  # fmt: skip
SelectionMode = Literal["sample", "topk", "gumbel", "random"]  # how a round turns priorities into documents
Preset = Literal["tiny", "small", "125m", "373m", "1.3b"]  # the keys of MODEL_PRESETS
#: LlamaConfig fields the run sets itself, so `model.overrides` may not: field -> the key that sets it.
RUN_SET_FIELDS = {"vocab_size": "tokenizer.vocab_size", "max_position_embeddings": "model.seq_len"}


@functools.cache
def llama_fields() -> dict[str, Any]:
    """LlamaConfig's fields (constructor arguments and attributes) with their defaults, and the keys of its
    mapping fields, which it also takes flat (`rope_theta` goes into `rope_parameters`)."""
    import inspect

    from transformers import LlamaConfig

    params = inspect.signature(LlamaConfig.__init__).parameters.values()
    named = {p.name: p.default for p in params if p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self"}
    fields = {**LlamaConfig().to_dict(), **named}
    nested = {str(k): v for value in fields.values() if isinstance(value, dict) for k, v in value.items()}
    return {**nested, **fields}


@dataclass
class ModelConfig(Section):
    where = "model"
    preset: Preset = "tiny"
    seq_len: int = bounded(256, gt=0)
    overrides: dict[str, Any] = field(default_factory=dict)  # LlamaConfig fields

    def validate(self, where: str) -> None:
        """Overrides must be LlamaConfig fields of the default's type (numbers are converted: `1e4`), and
        the preset's shape with them must divide into heads."""
        if not self.overrides:
            return
        known = llama_fields()
        for name, value in self.overrides.items():
            key = key_path(key_path(where, "overrides"), name)
            if name in RUN_SET_FIELDS:
                raise ConfigError(f"{key} is set by the run; set {RUN_SET_FIELDS[name]} instead")
            if name not in known:
                raise ConfigError(f"unknown config key {key} (not a field of transformers' LlamaConfig)")
            default = known[name]
            if isinstance(default, bool | int | float | str) and value is not None:
                self.overrides[name] = _value(type(default), value, key)
        shape = {**MODEL_PRESETS[self.preset], **self.overrides}
        for name in MODEL_PRESETS[self.preset]:
            if not (isinstance(shape[name], int) and shape[name] > 0):
                raise ConfigError(f"{key_path(where, 'overrides')}.{name} must be > 0, got {shape[name]}")
        for big, small in (
            ("hidden_size", "num_attention_heads"),
            ("num_attention_heads", "num_key_value_heads"),
        ):
            if shape[big] % shape[small]:
                raise ConfigError(
                    f"{key_path(where, 'overrides')}: {big} ({shape[big]}) must be a multiple of "
                    f"{small} ({shape[small]})"
                )


@dataclass
class TokenizerConfig(Section):
    where = "tokenizer"
    path: str | None = None  # a directory or hub name; None trains a byte-level BPE on a corpus sample
    vocab_size: int = bounded(8192, gt=0)
    sample_docs: int = bounded(20_000, gt=0)


@dataclass
class TrainConfig(Section):
    where = "train"
    steps: int = bounded(200, gt=0)
    batch_size: int = bounded(8, gt=0)  # sequences per micro-batch
    grad_accum: int = bounded(1, gt=0)
    lr: float = bounded(1e-3, gt=0)
    min_lr_ratio: float = bounded(0.1, ge=0, le=1)
    warmup_steps: int = bounded(20, ge=0)
    schedule: Literal["cosine", "wsd"] = "cosine"
    wsd_decay_fraction: float = bounded(0.2, ge=0, le=1)
    weight_decay: float = bounded(0.1, ge=0)
    beta1: float = bounded(0.9, ge=0, lt=1)
    beta2: float = bounded(0.95, ge=0, lt=1)
    clip: float = bounded(1.0, gt=0)
    seed: int = bounded(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    log_every: int = bounded(10, gt=0)
    num_workers: int = bounded(0, ge=0)  # DataLoader workers of the streaming reader
    # Steps between checkpoints inside a round (None: at round boundaries and the end only); a checkpoint
    # keeps the reader's position, so --resume continues at its step.
    checkpoint_every: int | None = bounded(None, gt=0)


@dataclass
class RoundsConfig(Section):
    where = "rounds"
    # U: steps between rounds (the first U steps read a random selection). The paper's 1500: probing costs
    # about as much as U = 50 steps of training at 160 probes (benchmarks/results/training.md).
    every: int = bounded(1500, gt=0)
    oversample: float = bounded(1.0, gt=0)  # selection budget = U * tokens per step * oversample


@dataclass
class RewardsConfig(Section):
    where = "rewards"
    method: Literal["gradient", "one_step"] = "gradient"
    cosine: bool = False
    projection_dim: int | None = bounded(None, gt=0)
    max_tokens: int = bounded(256, gt=0)  # probe documents are truncated to this many tokens
    chunk_size: int = bounded(16, gt=0)  # probes per vmap chunk


#: What `console.preset` sets when `mode` or `probes_per_label` is left out (docs/algorithm.md#version-2).
CONSOLE_PRESETS: dict[str, dict[str, Any]] = {
    "v2": {"mode": "sample", "probes_per_label": 16},
    "paper": {"mode": "topk", "probes_per_label": 64},
}


#: Bytes per token of the token estimate the catalog's cell statistics (`cell_stats`) are counted at.
TOKEN_BYTES = 4.0


@dataclass
class ConsoleConfig(Section):
    """Console settings, defaults from ALGORITHM.md. `preset: v2` (the default) is the noise-aware console,
    `preset: paper` the paper's (docs/algorithm.md#version-1-the-papers-console). Every ablation is config:
    `agents` (one agent, a pair), `fixed_weights`, `mode`, `preset`."""

    where = "console"
    preset: Literal["v2", "paper"] = "v2"
    agents: list[str] | None = None  # None: every registered agent, in registration order
    eta_theta: float = bounded(0.5, ge=0, le=1)
    theta_floor: float = bounded(0.02, ge=0, lt=1)
    decay_lambda: float = bounded(0.1, ge=0)
    mode: SelectionMode | None = None  # None: the preset's (sample / topk)
    gumbel_tau: float = bounded(0.1, gt=0)
    probes_per_label: int | None = bounded(None, ge=1)  # None: the preset's (16 / 64)
    tie_break: str = "hash"  # or an agent's name: its raw score, descending, orders equal priorities
    seed: int = 0
    fixed_weights: bool = False
    # n(x) = ceil(text_bytes / bytes_per_token), at least 1; the catalog's cell statistics count tokens at
    # TOKEN_BYTES, so another value makes the console count its cells itself (one pass over the documents)
    bytes_per_token: float = bounded(TOKEN_BYTES, gt=0)
    prior: dict[str, dict[str, float]] = field(default_factory=dict)  # agent -> label name -> initial w
    # preset paper only
    eta_agent: float = bounded(0.3, ge=0, le=1)
    tau_p: float = bounded(1.0, gt=0)
    # preset v2 only
    effects: Literal["joint", "marginal"] = "joint"
    ridge_lambda: float = bounded(1.0, gt=0)  # in units of probes
    forgetting: float = bounded(0.5, ge=0, le=1)  # rho
    prior_strength: float = bounded(0.0, ge=0)  # initial precision of w
    tau: float = bounded(0.25, gt=0)  # reward units
    eps: float = bounded(0.1, ge=0, le=1)
    max_cell_share: float = bounded(0.5, gt=0, le=1)
    s0: float = bounded(0.05, ge=0)

    def __post_init__(self) -> None:
        defaults = CONSOLE_PRESETS.get(self.preset, CONSOLE_PRESETS["v2"])
        if self.mode is None:
            self.mode = defaults["mode"]
        if self.probes_per_label is None:
            self.probes_per_label = defaults["probes_per_label"]

    def validate(self, where: str) -> None:
        if self.agents is not None and not self.agents:
            raise ConfigError(f"{key_path(where, 'agents')} is empty (leave it out to use every agent)")
        if self.agents is not None and len(set(self.agents)) != len(self.agents):
            raise ConfigError(f"{key_path(where, 'agents')} lists an agent twice: {self.agents}")
        if self.mode == "sample" and self.preset != "v2":
            raise ConfigError(f"{key_path(where, 'mode')}: sample needs {key_path(where, 'preset')}: v2")

    @property
    def effective_eta_agent(self) -> float:
        return 0.0 if self.fixed_weights else self.eta_agent

    @property
    def effective_eta_theta(self) -> float:
        return 0.0 if self.fixed_weights else self.eta_theta


@dataclass(frozen=True)
class ReferenceSpec(Section):
    """One reference task: where its rows are and how a row becomes a (prompt, answer) pair.

    `prompt` and `answer` are `str.format` templates over a row's columns, e.g. prompt `"{until_last}"` and
    answer `" {last_word}"`; nested values index as in `"{answers[text][0]}"`. The rows come from exactly one
    of `task` (a named task, lambada, squad or jeopardy, which brings its name and templates: see
    `resolved`), `path` (a Parquet file; `{workspace}` stands for the workspace directory) or `dataset` (a
    Hugging Face `datasets` name, with optional `config` and `split`).
    """

    where = "reference"
    name: str | None = None
    prompt: str | None = None
    answer: str | None = None
    task: str | None = None
    path: str | None = None
    dataset: str | None = None
    config: str | None = None
    split: str | None = None
    max_examples: int = bounded(1000, ge=1)
    probe_fraction: float = bounded(0.5, gt=0, le=1)
    seed: int = bounded(0, ge=0)

    def validate(self, where: str) -> None:
        label = self.name or self.task or "?"
        if self.task is not None:
            from corpus_agents.training.reference_sets import TASKS

            if self.task not in TASKS:
                raise ConfigError(
                    f"{key_path(where, 'task')} must be one of {', '.join(TASKS)}, got {self.task!r}"
                )
            if self.path is not None or self.dataset is not None:
                raise ConfigError(f"{where} ({label}): give one of 'task', 'path' or 'dataset', not two")
            return
        missing = [k for k in ("name", "prompt", "answer") if getattr(self, k) is None]
        if missing:
            raise ConfigError(f"{key_path(where, missing[0])} is required without a 'task'")
        if (self.path is None) == (self.dataset is None):
            raise ConfigError(f"{where} ({label}): give exactly one of 'task', 'path' or 'dataset'")

    def resolved(self, workspace: str | Path | None = None) -> ReferenceSpec:
        """The spec with its rows' file found: a `task` reads `WS/references/TASK.parquet` when it was built
        there (`corpus-agents references build WS/references`), else the sample shipped in the package
        (docs/algorithm.md#reference-tasks), with the task's name and templates where none are given;
        `{workspace}` in a path becomes the workspace directory."""
        from corpus_agents.training.reference_sets import resolve_task, task
        from corpus_agents.training.references import ReferenceSetError

        spec = self
        if self.task is not None:
            named = task(self.task)
            try:
                path = str(resolve_task(named.name, workspace))
            except CorpusAgentsError as exc:
                raise ReferenceSetError(str(exc)) from None
            spec = dataclasses.replace(
                self,
                name=self.name or named.name,
                prompt=self.prompt if self.prompt is not None else named.prompt,
                answer=self.answer if self.answer is not None else named.answer,
                task=None,  # now a plain path spec: resolving it again changes nothing
                path=path,
            )
        if spec.path is not None and "{workspace}" in spec.path:
            if workspace is None:
                raise ReferenceSetError(
                    f"reference {spec.name!r}: '{{workspace}}' in a path needs a workspace"
                )
            spec = dataclasses.replace(spec, path=spec.path.replace("{workspace}", str(workspace)))
        return spec


class AgentSpec:
    """An `agents:` entry: the agent kind and its options, written flat in YAML (`{kind: ..., OPTION: ...}`)."""

    def __init__(self, kind: str, options: Any):
        self.kind, self.options = kind, options

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AgentSpec) and (self.kind, self.options) == (other.kind, other.options)

    def __repr__(self) -> str:
        return f"AgentSpec({self.kind!r}, {self.options!r})"

    @classmethod
    def from_config(cls, data: Any, where: str) -> AgentSpec:
        from corpus_agents.scoring.agents import kinds, make_options

        if isinstance(data, AgentSpec):
            data = data.to_dict()
        if not isinstance(data, Mapping) or not data.get("kind"):
            raise ConfigError(f"{where} needs a `kind` (one of {', '.join(kinds())})")
        if data["kind"] not in kinds():
            raise ConfigError(f"{where}.kind must be one of {', '.join(kinds())}, got {data['kind']!r}")
        values = {str(k).replace("-", "_"): v for k, v in data.items() if k != "kind"}
        return cls(data["kind"], make_options(data["kind"], values, where))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.options.to_dict()}


@dataclass
class PipelineConfig(Section):
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    references: list[ReferenceSpec] = field(default_factory=list)
    # agents applied by `corpus-agents agent add WS --pipeline FILE`
    agents: dict[str, AgentSpec] = field(default_factory=dict)

    def validate(self, where: str) -> None:
        names = [r.name or r.task for r in self.references]  # a task's name is the task's unless given
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(f"references: two tasks are named {name!r}")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out = {k: v.to_dict() if isinstance(v, Section) else v for k, v in out.items()}
        out["references"] = [r.to_dict() for r in self.references]
        out["agents"] = {name: spec.to_dict() for name, spec in self.agents.items()}
        return out


# ----- files and overrides ------------------------------------------------------------------------------
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
        raise ConfigError(f"config {path} is not valid YAML: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of sections")
    base = data.pop("base", None)
    return _merge(read_yaml(path.parent / base, (*seen, path)), data) if base else data


def _set(data: dict[str, Any], item: str) -> None:
    """Apply one `--set a.b.c=value` to the raw mapping (a number indexes a list: references.0.path)."""
    keys, value = parse_override(item)
    node: Any = data
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not (k.isdigit() and int(k) < len(node)):
                raise ConfigError(f"--set {item}: {'.'.join(keys[:i])} has no entry {k}")
            if last:
                node[int(k)] = value
            else:
                node = node[int(k)]
        elif isinstance(node, dict):
            if last:
                node[k] = value
            else:
                if node.get(k) is None:
                    node[k] = {}
                node = node[k]
        else:
            raise ConfigError(f"--set {item}: {'.'.join(keys[:i])} is not a section")


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read a YAML pipeline config (or defaults with None), apply `section.key=value` overrides, check all."""
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    for item in overrides:
        _set(data, item)
    for section in ("model", "tokenizer", "train", "rounds", "rewards", "console", "agents"):
        if section in data and data[section] is None:  # an empty section in YAML (`console:`)
            data[section] = {}
    return build(PipelineConfig, data, "")


def dump_config(config: PipelineConfig) -> str:
    """The config as YAML that `load_config` reads back to an equal config (`train --print-config`)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True)
