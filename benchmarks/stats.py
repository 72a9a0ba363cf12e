"""Statistics of the selection-quality experiment: where a loss curve reaches a target, paired differences
between configurations over seeds with seeded bootstrap CIs, and the unigram-entropy baseline.

Curves are (x, loss) points in x order, x being training tokens or total compute. A curve reaches a target
at the first x after which it stays at or below it: a dip below the target that recovers does not count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

#: The words the generated tables use for a difference whose 95% CI includes 0.
NOT_DISTINGUISHABLE = "not distinguishable"
#: Fewer paired seeds than this are never called a difference: a bootstrap over two values is no interval.
MIN_PAIRS = 3


def reach(xs: Sequence[float], losses: Sequence[float], target: float) -> float | None:
    """The x at which the curve reaches `target` for good: linear between the last point above the target
    and the next one; the first x when every point is at or below; None when the last point is above."""
    if not len(xs) or losses[-1] > target:
        return None
    above = [i for i, loss in enumerate(losses) if loss > target]
    if not above:
        return float(xs[0])
    i = above[-1]
    x0, x1, l0, l1 = xs[i], xs[i + 1], losses[i], losses[i + 1]
    return float(x1) if l0 == l1 else float(x0 + (x1 - x0) * (l0 - target) / (l0 - l1))


def loss_at(xs: Sequence[float], losses: Sequence[float], x: float) -> float | None:
    """The curve's loss at `x`, linear between points; None outside the curve's range."""
    if not len(xs) or x < xs[0] or x > xs[-1]:
        return None
    return float(np.interp(x, xs, losses))


def bootstrap_ci(
    values: Sequence[float], resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over `values` (resampled with replacement, seeded)."""
    arr = np.asarray(values, dtype=np.float64)
    if len(arr) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), size=(resamples, len(arr)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return (float(low), float(high))


def paired(a: dict[int, float | None], b: dict[int, float | None], **bootstrap: Any) -> dict[str, Any] | None:
    """The paired difference a - b over the seeds both have a value for: n, mean, SD, effect size
    (mean / SD), bootstrap 95% CI of the mean, and whether the CI excludes 0 (over at least `MIN_PAIRS`
    seeds). None without a shared seed."""
    seeds = sorted(s for s in a if s in b and a[s] is not None and b[s] is not None)
    if not seeds:
        return None
    d = np.array([a[s] - b[s] for s in seeds], dtype=np.float64)  # type: ignore[operator]
    sd = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
    low, high = bootstrap_ci(d, **bootstrap)
    return {
        "n": len(d),
        "seeds": seeds,
        "mean": float(d.mean()),
        "sd": sd,
        "effect_size": float(d.mean() / sd) if sd and np.isfinite(sd) else float("nan"),
        "ci95": [low, high],
        "distinguishable": bool(len(d) >= MIN_PAIRS and (low > 0 or high < 0)),
    }


def describe(diff: dict[str, Any] | None, digits: int = 3) -> str:
    """A paired difference as table text: the mean and CI when the CI excludes 0, else `not
    distinguishable` (with the CI, so the reader sees how wide it is)."""
    if diff is None:
        return "-"
    low, high = diff["ci95"]
    ci = f"[{low:+.{digits}f}, {high:+.{digits}f}]"
    if not diff["distinguishable"]:
        return f"{NOT_DISTINGUISHABLE} ({diff['mean']:+.{digits}f}, CI {ci}, n={diff['n']})"
    return f"{diff['mean']:+.{digits}f} (CI {ci}, d={diff['effect_size']:.2f}, n={diff['n']})"


def unigram_entropy(token_ids: Iterable[int]) -> float:
    """Entropy in nats of the tokens' unigram distribution: the loss of a model that only knows token
    frequencies (measured on the same tokens, so a lower bound for such a model)."""
    counts = np.array(list(Counter(token_ids).values()), dtype=np.float64)
    if not len(counts):
        return float("nan")
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def unigram_cross_entropy(train_ids: Iterable[int], eval_ids: Iterable[int], vocab_size: int) -> float:
    """Cross-entropy in nats of `eval_ids` under the unigram distribution of `train_ids`, add-one smoothed
    over `vocab_size` tokens: the loss of a model that knows only how often each token occurs in its
    training text. Unlike `unigram_entropy` of the evaluated tokens themselves (an in-sample lower bound, far
    below it on a few hundred answers), this is what such a model reaches."""
    counts = np.bincount(np.fromiter(train_ids, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    log_p = np.log((counts + 1.0) / (counts.sum() + vocab_size))
    ids = np.fromiter(eval_ids, dtype=np.int64)
    return float(-log_p[ids].mean()) if len(ids) else float("nan")


__all__ = [
    "NOT_DISTINGUISHABLE",
    "bootstrap_ci",
    "describe",
    "loss_at",
    "paired",
    "reach",
    "unigram_cross_entropy",
    "unigram_entropy",
]
