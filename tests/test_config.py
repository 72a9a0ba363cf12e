"""Pipeline configs: every shipped YAML loads, `base` inheritance, `--set` overrides, and every section checked
at load (unknown keys, wrong types, ranges, enums) with one line naming the key; agent options per kind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import get_args, get_type_hints

import pytest
import yaml
from click.testing import CliRunner

from corpus_agents.cli import main
from corpus_agents.config import (
    MODEL_PRESETS,
    ConfigError,
    ConsoleConfig,
    Preset,
    ReferenceSpec,
    dump_config,
    load_config,
)
from corpus_agents.scoring.agents import REGISTRY, AgentContext, agent_class, make_options
from corpus_agents.scoring.agents.metadata import MetadataAgent, MetadataOptions
from corpus_agents.scoring.agents.topic import TopicOptions

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"
SHIPPED = sorted(PIPELINES.rglob("*.yaml"))
REFERENCE = "references:\n  - {name: docs, path: d.parquet, prompt: '{q}', answer: '{a}'}\n"


def shipped(path: Path) -> str:
    return str(path.relative_to(PIPELINES))


def load_text(tmp_path: Path, text: str, overrides: list[str] = ()) -> object:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return load_config(path, overrides)


def cli(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, (result.output, result.exception)
    return result.output


# ----- shipped pipelines --------------------------------------------------------------------------------
@pytest.mark.parametrize("path", SHIPPED, ids=shipped)
def test_every_shipped_pipeline_loads(path: Path) -> None:
    config = load_config(path)
    assert config.references and config.rounds.every > 0
    assert all(isinstance(r, ReferenceSpec) for r in config.references)
    assert isinstance(config.console, ConsoleConfig)


def test_ablations_change_only_what_they_say() -> None:
    demo = load_config(PIPELINES / "demo.yaml")
    fixed = load_config(PIPELINES / "ablations" / "fixed-weights.yaml")
    assert fixed.console.to_dict() == {**demo.console.to_dict(), "fixed_weights": True}
    assert fixed.train == demo.train and fixed.references == demo.references
    assert load_config(PIPELINES / "ablations" / "quality-only.yaml").console.agents == ["quality"]
    assert load_config(PIPELINES / "ablations" / "one-step.yaml").rewards.method == "one_step"
    assert (demo.console.preset, demo.console.mode) == ("v2", "sample")  # the demo runs the default console
    paper = load_config(PIPELINES / "ablations" / "paper.yaml").console
    assert paper.to_dict() == {**demo.console.to_dict(), "preset": "paper", "mode": "topk"}


def test_overrides_are_parsed_as_yaml() -> None:
    config = load_config(
        PIPELINES / "demo.yaml",
        ["train.steps=7", "console.eta_theta=0.25", "rewards.cosine=true", "train.lr=1e-3"],
    )
    assert config.train.steps == 7 and config.console.eta_theta == 0.25 and config.rewards.cosine is True
    assert config.train.lr == 0.001  # PyYAML reads 1e-3 as a string; a float field takes it as a number
    config = load_config(
        PIPELINES / "demo.yaml", ["references.1.max_examples=7", "model.overrides.rope_theta=1e4"]
    )
    assert config.references[1].max_examples == 7 and config.references[0].max_examples == 120
    assert config.model.overrides == {"rope_theta": 10000.0}


def test_unknown_keys_and_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown config key train.stepz"):
        load_config(None, ["train.stepz=3"])
    with pytest.raises(ConfigError, match="unknown config key trian"):
        load_config(None, ["trian.steps=3"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["train.steps"])
    with pytest.raises(ConfigError, match="references has no entry 5"):
        load_config(PIPELINES / "demo.yaml", ["references.5.path=x"])
    with pytest.raises(ConfigError, match="train.steps is not a section"):
        load_config(PIPELINES / "demo.yaml", ["train.steps.x=1"])
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


# ----- one typo per section -----------------------------------------------------------------------------
TYPOS = {
    "top level": ("trian:\n  steps: 3\n", "unknown config key trian "),
    "model": ("model:\n  sed_len: 64\n", "unknown config key model.sed_len "),
    "model.overrides": (
        "model:\n  overrides: {hiden_size: 64}\n",
        "unknown config key model.overrides.hiden_size ",
    ),
    "tokenizer": ("tokenizer:\n  vocab_sise: 512\n", "unknown config key tokenizer.vocab_sise "),
    "train": ("train:\n  stepz: 3\n", "unknown config key train.stepz "),
    "rounds": ("rounds:\n  evry: 3\n", "unknown config key rounds.evry "),
    "rewards": ("rewards:\n  methd: one_step\n", "unknown config key rewards.methd "),
    "console": ("console:\n  eta_thta: 0.5\n", "unknown config key console.eta_thta "),
    "references": (
        "references:\n  - {name: a, path: a.parquet, prompt: '{q}', answer: '{a}', promt: x}\n",
        "unknown config key references[0].promt ",
    ),
    "agents": (
        "agents:\n  domain: {kind: metadata, colum: source}\n",
        "agents.domain.colum is not an option of agent kind 'metadata' (its options: column)",
    ),
    "agents kind": ("agents:\n  domain: {knd: metadata}\n", "agents.domain needs a `kind`"),
}


@pytest.mark.parametrize("case", TYPOS, ids=str)
def test_a_typo_in_any_section_fails_at_load_naming_the_key(tmp_path: Path, case: str) -> None:
    text, message = TYPOS[case]
    with pytest.raises(ConfigError) as error:
        load_text(tmp_path, REFERENCE + text)
    assert message in str(error.value) and "\n" not in str(error.value)


# ----- wrong types and ranges ---------------------------------------------------------------------------
BAD_VALUES = [
    ("train.steps=ten", "train.steps must be an integer, got 'ten'"),
    ("train.steps=2.5", "train.steps must be an integer, got 2.5"),
    ("train.lr=fast", "train.lr must be a number, got 'fast'"),
    ("rewards.cosine=2", "rewards.cosine must be true or false, got 2"),
    ("tokenizer.path=3", "tokenizer.path must be a string, got 3"),
    ("train=5", "train must be a mapping, got 5"),
    ("references={a: 1}", "references must be a list"),
    ("console.prior={domain: {code: high}}", "console.prior.domain.code must be a number, got 'high'"),
    ("model.overrides.hidden_size=big", "model.overrides.hidden_size must be an integer, got 'big'"),
    (
        "model.overrides.vocab_size=100",
        "model.overrides.vocab_size is set by the run; set tokenizer.vocab_size",
    ),
    ("train.steps=0", "train.steps must be > 0, got 0"),
    ("train.warmup_steps=-1", "train.warmup_steps must be >= 0, got -1"),
    ("train.beta2=1", "train.beta2 must be < 1, got 1.0"),
    ("train.min_lr_ratio=1.5", "train.min_lr_ratio must be <= 1, got 1.5"),
    ("rounds.every=0", "rounds.every must be > 0, got 0"),
    ("rounds.oversample=0", "rounds.oversample must be > 0"),
    ("rewards.projection_dim=0", "rewards.projection_dim must be > 0, got 0"),
    ("console.eta_theta=1.5", "console.eta_theta must be <= 1, got 1.5"),
    ("console.theta_floor=1", "console.theta_floor must be < 1"),
    ("console.probes_per_label=0", "console.probes_per_label must be >= 1, got 0"),
    ("console.eps=1.5", "console.eps must be <= 1, got 1.5"),
    ("console.tau=0", "console.tau must be > 0, got 0.0"),
    ("console.max_cell_share=0", "console.max_cell_share must be > 0, got 0.0"),
    ("console.forgetting=2", "console.forgetting must be <= 1, got 2.0"),
    ("console.ridge_lambda=0", "console.ridge_lambda must be > 0, got 0.0"),
    ("console.agents=[]", "console.agents is empty"),
    ("console.agents=[a, a]", "console.agents lists an agent twice"),
    ("references.0.probe_fraction=0", "references[0].probe_fraction must be > 0, got 0.0"),
    ("references.0.max_examples=0", "references[0].max_examples must be >= 1, got 0"),
    ("references.0.dataset=lambada", "references[0] (docs): give exactly one of 'task', 'path' or 'dataset'"),
    ("references.0={name: docs, prompt: x}", "references[0].answer is required"),
    (
        "model.overrides.num_attention_heads=3",
        "hidden_size (128) must be a multiple of num_attention_heads (3)",
    ),
    ("model.overrides.intermediate_size=0", "model.overrides.intermediate_size must be > 0, got 0"),
    ("agents.t={kind: topic, topics: 1}", "agents.t.topics must be >= 2, got 1"),
    ("agents.q={kind: fasttext}", "a fasttext agent needs exactly one of agents.q.model"),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_wrong_types_and_ranges_are_one_line_errors(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_text(tmp_path, REFERENCE, [override])
    assert message in str(error.value) and "\n" not in str(error.value)


ENUMS = [
    ("train.dtype=fp16", "train.dtype must be one of auto, bf16, fp32, got 'fp16'"),
    ("train.device=tpu", "train.device must be one of auto, cpu, cuda, got 'tpu'"),
    ("train.schedule=linear", "train.schedule must be one of cosine, wsd, got 'linear'"),
    ("rewards.method=grad", "rewards.method must be one of gradient, one_step, got 'grad'"),
    ("console.mode=best", "console.mode must be one of sample, topk, gumbel, random, got 'best'"),
    ("console.preset=v1", "console.preset must be one of v2, paper, got 'v1'"),
    ("console.effects=both", "console.effects must be one of joint, marginal, got 'both'"),
    ("model.preset=huge", "model.preset must be one of tiny, small, 125m, 373m, 1.3b, got 'huge'"),
    (
        "agents.x={kind: lda}",
        "agents.x.kind must be one of attributes, column, fasttext, hf-classifier, metadata, noise, topic, got 'lda'",
    ),
    ("agents.x={kind: topic, method: lda}", "agents.x.method must be one of tfidf, minilm, got 'lda'"),
    (
        "agents.x={kind: hf-classifier, model: m, dtype: int8}",
        "agents.x.dtype must be one of auto, bf16, fp16, fp32",
    ),
]


@pytest.mark.parametrize(("override", "message"), ENUMS, ids=[o for o, _ in ENUMS])
def test_enum_errors_list_the_allowed_values(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_enums_match_what_the_code_accepts() -> None:
    from corpus_agents.training.console import MODES
    from corpus_agents.training.models import PRESETS

    (modes, _) = get_args(get_type_hints(ConsoleConfig)["mode"])  # Literal[...] | None (the preset's)
    assert get_args(modes) == MODES
    assert get_args(Preset) == tuple(PRESETS) == tuple(MODEL_PRESETS)


def test_console_preset_sets_mode_and_probes_unless_given() -> None:
    assert (ConsoleConfig().mode, ConsoleConfig().probes_per_label) == ("sample", 16)
    paper = load_config(None, ["console.preset=paper"]).console
    assert (paper.mode, paper.probes_per_label) == ("topk", 64)
    assert load_config(None, ["console.preset=paper", "console.mode=gumbel"]).console.mode == "gumbel"
    with pytest.raises(ConfigError, match="console.mode: sample needs console.preset: v2"):
        load_config(None, ["console.preset=paper", "console.mode=sample"])


def test_directly_built_sections_are_checked_too() -> None:
    ConsoleConfig(mode="gumbel").check()
    with pytest.raises(ConfigError, match="console.eta_agent must be <= 1, got 2"):
        ConsoleConfig(eta_agent=2).check()
    with pytest.raises(ConfigError, match="unknown config key reference.promt"):
        ReferenceSpec.from_dict({"name": "t", "path": "x", "prompt": "{q}", "answer": "{a}", "promt": "x"})


def test_inherited_values_are_checked_with_the_child(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(REFERENCE + "train:\n  steps: 10\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\ntrain:\n  dtype: bf16\n")
    config = load_config(child)
    assert (config.train.steps, config.train.dtype, config.references[0].name) == (10, "bf16", "docs")
    child.write_text("base: base.yaml\ntrain:\n  dtyp: bf16\n")
    with pytest.raises(ConfigError, match="unknown config key train.dtyp "):
        load_config(child)


# ----- the command line ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path", SHIPPED, ids=shipped)
def test_print_config_round_trips_through_the_loader(tmp_path: Path, path: Path) -> None:
    out = cli("train", str(tmp_path), "--pipeline", str(path), "--set", "train.steps=17", "--print-config")
    assert yaml.safe_load(out)["train"]["steps"] == 17 and "dtype: auto" in out  # fully defaulted
    printed = tmp_path / "printed.yaml"
    printed.write_text(out)
    assert load_config(printed) == load_config(path, ["train.steps=17"])
    assert dump_config(load_config(printed)) == out
    assert list(tmp_path.iterdir()) == [printed]  # no run directory, no tokenizer: nothing was done


def test_select_prints_its_effective_config(tmp_path: Path) -> None:
    args = ["select", str(tmp_path), "--run", "r", "--pipeline", str(PIPELINES / "demo.yaml")]
    out = cli(*args, "--mode", "gumbel", "--print-config")
    assert yaml.safe_load(out)["console"]["mode"] == "gumbel"
    assert list(tmp_path.iterdir()) == []


def test_train_refuses_a_bad_value_before_any_work(tmp_path: Path) -> None:
    out = cli("train", str(tmp_path), "--set", "train.steps=ten", code=2)
    assert out == "error: train.steps must be an integer, got 'ten'\n"
    out = cli("train", str(tmp_path), "--set", "model.overrides.hiden_size=64", code=2)
    assert out.startswith("error: unknown config key model.overrides.hiden_size ") and out.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_agent_add_rejects_options_of_other_kinds(tmp_path: Path, make_corpus) -> None:
    make_corpus(tmp_path / "shards", 1, 20)
    ws = str(tmp_path / "ws")
    cli("init", ws, "--corpus", str(tmp_path / "shards"))
    out = cli(
        "agent", "add", ws, "domain", "--kind", "metadata", "--column", "source", "--topics", "5", code=2
    )
    assert out == "error: --topics is not an option of agent kind 'metadata' (its options: --column)\n"
    out = cli("agent", "add", ws, "t", "--kind", "topic", "--dtype", "bf16", code=2)
    assert (
        "--dtype is not an option of agent kind 'topic' (its options: --topics, --sample, --method, --seed)"
        in out
    )
    out = cli("agent", "add", ws, "t", "--kind", "topic", "--topics", "1", code=2)
    assert out == "error: --topics must be >= 2, got 1\n"
    out = cli("agent", "add", ws, "t", "--kind", "topic", "--method", "lda", code=2)
    assert out == "error: --method must be one of tfidf, minilm, got 'lda'\n"
    out = cli("agent", "add", ws, "d", "--kind", "metadata", code=2)
    assert out == "error: --column is required\n"
    out = cli("query", ws, "SELECT count(*) AS n FROM agents", "--format", "csv")
    assert out.splitlines()[1] == "0"


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_every_kind_rejects_every_option_it_does_not_own(kind: str) -> None:
    own = {f for f in get_type_hints(agent_class(kind).options_type) if f != "where"}
    others = {f for k in REGISTRY for f in get_type_hints(agent_class(k).options_type)} - own - {"where"}
    assert others
    for option in sorted(others):
        with pytest.raises(ConfigError, match=f"--{option.replace('_', '-')} is not an option of agent kind"):
            make_options(kind, {option: 1})


def test_options_are_one_dataclass_for_cli_yaml_and_agent(tmp_path: Path) -> None:
    from_cli = make_options("topic", {"topics": 3, "method": "minilm"})
    from_yaml = load_config(None, ["agents.t={kind: topic, topics: 3, method: minilm}"]).agents["t"].options
    assert from_cli == from_yaml == TopicOptions(topics=3, method="minilm")
    assert make_options("hf-classifier", {"model": "m", "bins": "0,0.5,1"}).bins == [0.0, 0.5, 1.0]
    dashed = load_config(None, ["agents.q={kind: hf-classifier, model: m, trust-remote-code: true}"])
    assert dashed.agents["q"].options.trust_remote_code is True  # YAML may spell options as the flags do


def test_metadata_fingerprint_is_unchanged_by_typed_options(tmp_path: Path) -> None:
    """The stored config (and so the fingerprint that decides rescoring) is what it was with dict options."""
    context = AgentContext(tmp_path, tmp_path, distinct_values=lambda column: ["web", "code", None])
    agent = MetadataAgent.create("domain", MetadataOptions(column="meta.source"), context)
    assert agent.config == {"column": "meta.source", "labels": ["code", "web", "(other)"]}
    assert agent.fingerprint() == "2b7ae620bb243f4e295a7d7de98e93a6"  # computed before options were typed


def test_the_library_does_not_import_the_cli() -> None:
    code = (
        "import sys, corpus_agents.config as c, corpus_agents.scoring.agents as a;"
        "c.load_config(None, ['agents.t={kind: topic}']); a.make_options('metadata', {'column': 'x'});"
        "assert 'corpus_agents.cli' not in sys.modules and 'click' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
