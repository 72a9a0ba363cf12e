"""Tests of the hf-classifier agent against a plain transformers loop, on tiny randomly initialised models."""

from __future__ import annotations

import pickle
import shutil
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers import BERT_CLASSES, tiny_bert_classifier, tokenizer_dir
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForSequenceClassification,
)

from corpus_agents.config import ConfigError
from corpus_agents.scoring.agents import build_agent, hf_classifier
from corpus_agents.scoring.agents.base import AgentContext, AgentError, digitize
from corpus_agents.scoring.agents.hf_classifier import HFClassifierAgent
from corpus_agents.scoring.corpus import DocBatch

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
    return tiny_bert_classifier(tmp_path_factory.mktemp("regression"), num_labels=1)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert_classifier(tmp_path_factory.mktemp("classifier"), num_labels=len(BERT_CLASSES))


@pytest.fixture
def context(tmp_path: Path) -> AgentContext:
    return AgentContext(workspace_dir=tmp_path, models_dir=tmp_path / "models")


@pytest.mark.parametrize("options", [{}, {"max_length": 16, "batch_tokens": 40}])
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
    assert agent.labels == BERT_CLASSES

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
    expected = softmax(reference_logits(classifier_dir, TEXTS))[:, BERT_CLASSES.index("high")]
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
    ("options", "error", "message"),
    [
        ({}, ConfigError, "--model is required"),
        ({"model": "/nonexistent/model-dir"}, AgentError, "does not exist"),
        ({"model": "REGRESSION", "label": "high"}, AgentError, "needs a classification model"),
        ({"model": "CLASSIFIER", "bins": "0,1"}, AgentError, "--bins needs --label"),
        (
            {"model": "REGRESSION", "dtype": "int8"},
            ConfigError,
            "--dtype must be one of auto, bf16, fp16, fp32",
        ),
        ({"model": "REGRESSION", "max_length": 0}, ConfigError, "--max-length must be > 0, got 0"),
        ({"model": "REGRESSION", "max_length": "16"}, ConfigError, "--max-length must be an integer"),
        ({"model": "REGRESSION", "max_length": 4096}, AgentError, "exceeds the 512 positions"),
        (
            {"model": "REGRESSION", "bins": "0,2,1"},
            ConfigError,
            "--bins must be at least two strictly increasing",
        ),
        (
            {"model": "REGRESSION", "trust_remote_code": "maybe"},
            ConfigError,
            "--trust-remote-code must be true or false",
        ),
        ({"model": "REGRESSION", "topics": 3}, ConfigError, "unknown config key --topics"),
    ],
)
def test_option_errors(
    regression_dir: Path,
    classifier_dir: Path,
    context: AgentContext,
    options: dict,
    error: type[Exception],
    message: str,
) -> None:
    dirs = {"REGRESSION": str(regression_dir), "CLASSIFIER": str(classifier_dir)}
    options = {key: dirs.get(value, value) for key, value in options.items()}
    with pytest.raises(error, match=message):
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
    model_dir = tiny_bert_classifier(tmp_path / "model", num_labels=1, seed=0)
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

    tiny_bert_classifier(model_dir, num_labels=1, seed=1)
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


# ----- the chunked, overlapped inference pipeline --------------------------------------------------------
#: fp32 outputs of differently shaped batches differ by float rounding, amplified by the tiny models' large
#: random weights to a few 1e-6 relative.
CLOSE = {"rtol": 1e-5, "atol": 1e-5}


def varied_texts(n: int, seed: int = 0) -> list[str]:
    """`n` documents of very different lengths (empty and whitespace-only ones included), in random order."""
    rng = np.random.default_rng(seed)
    words = "the river carries silt to the delta where farmers grow rice and wheat every spring".split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 120)))) for _ in range(n)]
    texts[1], texts[-2] = "", "   \n\t "
    return texts


def record_inputs(agent: HFClassifierAgent) -> list[dict[str, torch.Tensor]]:
    """Every input the agent's model receives from now on (a forward pre-hook; removed with the model)."""
    seen: list[dict[str, torch.Tensor]] = []
    agent.model.model.register_forward_pre_hook(
        lambda _module, _args, kwargs: seen.append(dict(kwargs)), with_kwargs=True
    )
    return seen


def test_chunks_are_tokenised_in_the_background_and_keep_document_order(
    tmp_path: Path, context: AgentContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = tiny_bert_classifier(
        tmp_path / "model", num_labels=len(BERT_CLASSES)
    )  # own model: the hook stays local
    texts = varied_texts(23)
    expected = reference_logits(model_dir, texts)
    agent = HFClassifierAgent.create("q", {"model": str(model_dir), "batch_tokens": 200}, context)
    inputs = record_inputs(agent)
    tokenised: list[tuple[str, int]] = []
    tokenize = HFClassifierAgent._tokenize

    def spy(self: HFClassifierAgent, tokenizer: object, chunk: list[str]) -> dict:
        tokenised.append((threading.current_thread().name, len(chunk)))
        return tokenize(self, tokenizer, chunk)

    monkeypatch.setattr(HFClassifierAgent, "_tokenize", spy)
    monkeypatch.setattr(hf_classifier, "CHUNK_DOCS", 5)
    logits = agent._logits(texts)

    assert [n for _, n in tokenised] == [5, 5, 5, 5, 3]  # 23 documents, chunk boundaries at 5
    assert all(name.startswith("hf-tokenize") for name, _ in tokenised)
    np.testing.assert_allclose(logits, expected, **CLOSE)  # order restored across chunks and sub-batches
    for features in inputs:
        rows, width = features["input_ids"].shape
        assert rows == 1 or rows * width <= 200
        assert (features["attention_mask"].sum(dim=1) > 0).all()
        assert features["attention_mask"][:, -1].any()  # padded to the longest document, no wider
    assert sum(len(f["input_ids"]) for f in inputs) == len(texts)

    monkeypatch.setattr(hf_classifier, "CHUNK_DOCS", 256)
    np.testing.assert_allclose(agent._logits(texts), logits, **CLOSE)  # one chunk: same outputs


def test_logits_match_one_document_at_a_time(classifier_dir: Path, context: AgentContext) -> None:
    texts = varied_texts(24, seed=1)
    agent = HFClassifierAgent.create("q", {"model": str(classifier_dir), "batch_tokens": 512}, context)
    np.testing.assert_allclose(agent._logits(texts), reference_logits(classifier_dir, texts), **CLOSE)


def test_documents_without_tokens_get_nan(tmp_path: Path, context: AgentContext) -> None:
    model_dir = tiny_bert_classifier(tmp_path / "model", num_labels=1)
    agent = HFClassifierAgent.create("edu", {"model": str(model_dir)}, context)
    agent.model.tokenizer.backend_tokenizer.post_processor = None  # no [CLS]/[SEP]: "" has no tokens
    result = agent.score(batch(["", "a river", "   \n ", "the delta", ""]))
    assert np.isnan(result.scores[[0, 2, 4]]).all() and (result.labels[[0, 2, 4]] == -1).all()
    assert np.isfinite(result.scores[[1, 3]]).all() and (result.labels[[1, 3]] >= 0).all()
    assert np.isnan(agent.score(batch([" ", ""])).scores).all()


def test_max_length_truncation_is_honoured(regression_dir: Path, context: AgentContext) -> None:
    head = "rivers carry silt to the sea " * 2  # 12 words, 12 tokens
    texts = [head + "and nothing else", head + "then a long tail of other words " * 50, "short one"]
    agent = HFClassifierAgent.create("edu", {"model": str(regression_dir), "max_length": 10}, context)
    inputs = record_inputs(agent)
    scores = agent.score(batch(texts)).scores
    assert max(f["input_ids"].shape[1] for f in inputs) == 10
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)  # same first 10 tokens ([CLS] + 8 + [SEP])
    np.testing.assert_allclose(scores, reference_logits(regression_dir, texts, max_length=10)[:, 0], **CLOSE)
    whole = HFClassifierAgent.create("edu", {"model": str(regression_dir)}, context).score(batch(texts))
    assert whole.scores[0] != pytest.approx(whole.scores[1], abs=1e-3)


def test_tokenizer_without_pad_token_runs_one_document_per_batch(
    tmp_path: Path, context: AgentContext
) -> None:
    model_dir = tiny_bert_classifier(tmp_path / "model", num_labels=1)
    texts = varied_texts(6, seed=2)
    expected = reference_logits(model_dir, texts)
    agent = HFClassifierAgent.create("edu", {"model": str(model_dir)}, context)
    agent.model.tokenizer.pad_token = None
    inputs = record_inputs(agent)
    np.testing.assert_allclose(agent.score(batch(texts)).scores, expected[:, 0], **CLOSE)
    assert [f["input_ids"].shape[0] for f in inputs] == [1] * len(texts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_cuda_half_precision_is_close_to_fp32(
    tmp_path: Path, context: AgentContext, monkeypatch: pytest.MonkeyPatch, dtype: str
) -> None:
    # Pretrained MiniLM weights: the tiny random models amplify rounding far beyond what real models do.
    torch.manual_seed(0)
    model_dir = tmp_path / "minilm"
    BertForSequenceClassification.from_pretrained(tokenizer_dir(), num_labels=1).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tokenizer_dir()).save_pretrained(model_dir)
    texts = varied_texts(300, seed=3)
    monkeypatch.setattr(hf_classifier, "CHUNK_DOCS", 64)  # several chunks: overlapped copies are exercised
    fp32 = HFClassifierAgent.create("edu", {"model": str(model_dir), "dtype": "fp32"}, context)
    half = HFClassifierAgent.create("edu", {"model": str(model_dir), "dtype": dtype}, context)
    assert fp32.model.device.type == half.model.device.type == "cuda"
    assert half.model.model.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    exact = fp32.score(batch(texts)).scores
    np.testing.assert_allclose(exact, reference_logits(model_dir, texts)[:, 0], rtol=1e-3, atol=1e-4)
    close = half.score(batch(texts)).scores
    assert np.isfinite(close).all() and np.corrcoef(exact, close)[0, 1] > 0.99
    np.testing.assert_allclose(close, exact, atol=0.05 * float(np.abs(exact).max()))
