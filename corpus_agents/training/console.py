"""The console: fuses agents' labels into priorities, learns from probe rewards, selects each round's documents."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_args

import numpy as np
import pyarrow as pa

from corpus_agents.config import TOKEN_BYTES, ConsoleConfig, SelectionMode
from corpus_agents.errors import CorpusAgentsError
from corpus_agents.scoring.catalog import Catalog, quote_literal
from corpus_agents.sqlfiles import fragment
from corpus_agents.training.selection import SNAPSHOT_ROW_GROUP, ShardRef, write_snapshot_parts

SQL_FILE = "console.sql"
_T = TypeVar("_T")
MODES: tuple[str, ...] = get_args(SelectionMode)
# Packed label tuples (see sql/console.sql) are computed through DOUBLE products: exact below 2**53.
_MAX_CELLS = 2**53
# A round past every recorded one.
_LATEST = 2**31 - 1
# Documents per range of a pass over every agent's scores (hash tables of this size stay in cache) ...
_CHUNK_ROWS = 1_000_000
# ... and of a pass over `doc_cells` (no join but the run's seen counts, read once per range).
_CELL_CHUNK_ROWS = 4_000_000
# DuckDB's memory limit during a console call (see Console._agents_registered): it bounds what DuckDB keeps
# of the blocks a pass read. A pass works range by range in far less; the one join that needs more is a
# later round's count of the seen documents (one hash table over them): at 100M documents (10M seen) it
# goes out of core below about this and takes half as long again (benchmarks/results/selection.md).
_DUCKDB_MEMORY = 1024 * 2**20
# Candidates from which a cut sorts only the end of the order (`_prefix_within`).
_PARTIAL_SORT_ROWS = 100_000
# The largest hash (an unsigned 64-bit integer): a threshold that keeps every document.
_H_ALL = 2**64 - 1
# A standard error is never taken below this (a round whose rewards fit exactly would give infinite precision).
_MIN_SE = 1e-6


class ConsoleError(CorpusAgentsError):
    """An invalid console config, or a run that is missing or recorded with another config."""


@dataclass(frozen=True)
class ConsoleState:
    """A run's state after a round: agent memories (agent -> label name -> w) and collaboration weights."""

    round: int
    w: dict[str, dict[str, float]]
    theta: dict[str, float]


def project_to_simplex(values: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """Euclidean projection onto {x >= floor, sum x = 1} (floor capped at 1/K); feasible points stay as they are."""
    v = np.asarray(values, dtype=np.float64)
    k = len(v)
    floor = min(floor, 1.0 / k)
    if abs(v.sum() - 1.0) <= 1e-12 and v.min() >= floor:
        return v.copy()
    radius = 1.0 - k * floor
    if radius <= 0:
        return np.full(k, 1.0 / k)
    y = v - floor  # projection of y onto the simplex of this radius (Duchi et al. 2008)
    u = np.sort(y)[::-1]
    excess = np.cumsum(u) - radius
    rho = np.nonzero(u - excess / np.arange(1, k + 1) > 0)[0][-1]
    return np.maximum(y - excess[rho] / (rho + 1), 0.0) + floor


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def learn_round(
    w: Mapping[str, np.ndarray],
    rewards: Mapping[str, np.ndarray],
    theta: Mapping[str, float],
    *,
    eta_agent: float,
    eta_theta: float,
    tau_p: float,
    theta_floor: float,
) -> tuple[dict[str, np.ndarray], dict[str, float | None], dict[str, float]]:
    """One round of learning: agent memories (Eq. 4-5) and collaboration weights (Eq. 7-8).

    `w[A]` and `rewards[A]` are aligned per label (`rewards` NaN where a label had no probe). Returns the new
    memories, each agent's round reward R_A (None without any probed label: its theta only moves through
    the projection) and the new theta.
    """
    new_w: dict[str, np.ndarray] = {}
    agent_reward: dict[str, float | None] = {}
    for agent, w_a in w.items():
        r = rewards[agent]
        probed = ~np.isnan(r)
        # One step per round; labels without probes keep their weight.
        new_w[agent] = np.where(probed, (1.0 - eta_agent) * w_a + eta_agent * np.nan_to_num(r), w_a)
        # p_A uses the UPDATED memory: Algorithm 2 runs the console update (step 4) after the agent update
        # (step 3), so an agent is credited for the preference it holds once this round's evidence is in.
        # With the previous memory, round 1 would weigh every label uniformly (w starts at zero) and an agent
        # that separates good from bad labels would earn exactly what an uninformative one earns.
        p = softmax(new_w[agent][probed] / tau_p) if probed.any() else None
        agent_reward[agent] = float(p @ r[probed]) if p is not None else None
    earned = [r for r in agent_reward.values() if r is not None]
    mean = float(np.mean(earned)) if earned else 0.0
    advantage = {a: 0.0 if r is None else r - mean for a, r in agent_reward.items()}
    moved = np.array([theta[a] + eta_theta * advantage[a] for a in theta])
    new_theta = dict(zip(theta, project_to_simplex(moved, theta_floor).tolist()))
    return new_w, agent_reward, new_theta


# ----- Version 2: label effects, memory, theta, selection shares (docs/algorithm.md#version-2) ----------
@dataclass(frozen=True)
class Effects:
    """One round's label effects per agent, aligned with its labels 0..n_A-1: `beta` and `se` (NaN where the
    round measured no effect), the probes behind each, and the covariance of `beta` (NaN likewise)."""

    beta: dict[str, np.ndarray]
    se: dict[str, np.ndarray]
    count: dict[str, np.ndarray]
    cov: dict[str, np.ndarray]


def joint_effects(
    labels: Mapping[str, np.ndarray],
    num_labels: Mapping[str, int],
    rewards: np.ndarray,
    weights: np.ndarray,
    ridge_lambda: float,
    shares: Mapping[str, np.ndarray] | None = None,
) -> Effects:
    """Fit r ~ b + sum_A beta_A[l_A] by weighted ridge regression on the agents' one-hot labels.

    `labels[A]` is each probe's label under A (-1: unlabelled, no column); only labels with probes get a
    column. `weights` (the inverse inclusion probabilities) are scaled to mean 1, so the penalty
    `ridge_lambda` on every beta (not on b) is in units of probes. The covariance is the ridge posterior's,
    sigma^2 (X'WX + lambda I)^-1, with sigma^2 the weighted residual variance over n - tr(H) degrees of
    freedom. An agent's effects are only defined up to a constant (moved into b), so each agent's are
    centred on their mean under `shares[A]` (its labels' token shares; default uniform) over the measured
    labels: beta_A[j] is label j against the agent's corpus average, and its se leaves out the constant.
    """
    n = len(rewards)
    w = np.asarray(weights, dtype=np.float64)
    w = w * (n / w.sum()) if n else w
    columns = [(a, j) for a in labels for j in range(num_labels[a]) if n and (labels[a] == j).any()]
    x = np.ones((n, 1 + len(columns)))
    for c, (a, j) in enumerate(columns, start=1):
        x[:, c] = labels[a] == j
    penalty = np.full(1 + len(columns), float(ridge_lambda))
    penalty[0] = 0.0
    xtw = x.T * w
    gram = xtw @ x
    inverse = np.linalg.pinv(gram + np.diag(penalty)) if n else np.zeros((1, 1))
    coef = inverse @ (xtw @ rewards) if n else np.zeros(1)
    resid = rewards - x @ coef
    dof = max(n - float(np.trace(inverse @ gram)), 1.0)
    sigma2 = float(w @ resid**2) / dof if n else 0.0
    cov = sigma2 * inverse
    out = Effects({}, {}, {}, {})
    for a in labels:
        k = num_labels[a]
        out.beta[a], out.se[a] = np.full(k, np.nan), np.full(k, np.nan)
        out.count[a] = np.bincount(labels[a][labels[a] >= 0], minlength=k)[:k]
        out.cov[a] = np.full((k, k), np.nan)
        index = [(c, j) for c, (b, j) in enumerate(columns, start=1) if b == a]
        if not index:
            continue
        cols, js = [c for c, _ in index], [j for _, j in index]
        pi = np.ones(len(js)) if shares is None else np.asarray(shares[a], dtype=np.float64)[js]
        pi = pi / pi.sum() if pi.sum() > 0 else np.full(len(js), 1.0 / len(js))
        centre = np.eye(len(js)) - np.outer(np.ones(len(js)), pi)
        out.beta[a][js] = centre @ coef[cols]
        block = centre @ cov[np.ix_(cols, cols)] @ centre.T
        out.cov[a][np.ix_(js, js)] = block
        out.se[a][js] = np.maximum(np.sqrt(np.maximum(np.diag(block), 0.0)), _MIN_SE)
    return out


def marginal_effects(
    labels: Mapping[str, np.ndarray],
    num_labels: Mapping[str, int],
    rewards: np.ndarray,
    drawn: Mapping[str, np.ndarray],
) -> Effects:
    """`effects: marginal`: beta_A[j] = the mean reward of the probes that stratum (A, j) drew (`drawn[A]`:
    whether A's stratum of the probe's label drew it), se from the agent's pooled within-stratum variance."""
    out = Effects({}, {}, {}, {})
    for a in labels:
        k = num_labels[a]
        mine = drawn[a] & (labels[a] >= 0)
        lab, r = labels[a][mine], rewards[mine]
        count = np.bincount(lab, minlength=k)[:k]
        total = np.bincount(lab, weights=r, minlength=k)[:k]
        beta = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        resid = r - beta[lab] if len(lab) else r
        measured = int((count > 0).sum())
        s2 = float(resid @ resid) / max(len(lab) - measured, 1)
        se = np.where(count > 0, np.maximum(np.sqrt(s2 / np.maximum(count, 1)), _MIN_SE), np.nan)
        out.beta[a], out.se[a], out.count[a], out.cov[a] = beta, se, count, np.diag(se**2)
    return out


def update_memory(
    w: np.ndarray, precision: np.ndarray, beta: np.ndarray, se: np.ndarray, forgetting: float
) -> tuple[np.ndarray, np.ndarray]:
    """Precision-weighted memory with forgetting rho: pi' = rho pi + 1/se^2, w' = (rho pi w + beta/se^2) / pi'.
    A label without an effect this round (beta NaN) keeps w; its precision fades to rho pi."""
    faded = forgetting * precision
    measured = ~np.isnan(beta)
    gain = np.where(measured, 1.0 / np.where(measured, se, 1.0) ** 2, 0.0)
    new_precision = faded + gain
    mixed = (faded * w + gain * np.nan_to_num(beta)) / np.where(new_precision > 0, new_precision, 1.0)
    return np.where(measured, mixed, w), new_precision


def floor_and_renormalise(theta: np.ndarray, floor: float) -> np.ndarray:
    """Normalise to sum 1, lift the weights below `floor` (capped at 1/K) to it and scale the others down
    to keep the sum, until none is below: the others keep their ratios."""
    x = np.asarray(theta, dtype=np.float64) / np.sum(theta)
    floor = min(floor, 1.0 / len(x))
    fixed = np.zeros(len(x), dtype=bool)
    while True:
        low = ~fixed & (x < floor)
        if not low.any():
            return x
        fixed |= low
        x[fixed] = floor
        free = ~fixed
        if free.any():
            x[free] *= (1.0 - floor * fixed.sum()) / x[free].sum()


def hedge_theta(
    theta: np.ndarray, advantage: np.ndarray, advantage_se: np.ndarray, *, eta: float, s0: float, floor: float
) -> np.ndarray:
    """theta_A <- theta_A * exp(eta * Adv_A / (se(Adv_A) + s0)), then the floor and renormalise."""
    scale = advantage_se + s0
    z = np.where(scale > 0, advantage / np.where(scale > 0, scale, 1.0), 0.0)
    logits = np.log(np.asarray(theta, dtype=np.float64)) + eta * z
    return floor_and_renormalise(np.exp(logits - logits.max()), floor)


def advantage_over_random(
    halves: tuple[Effects, Effects],
    memories: tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]],
    token_share: Mapping[str, np.ndarray],
    tau: float,
) -> tuple[dict[str, float], dict[str, float], dict[str, float | None]]:
    """Each agent's advantage over random selection, measured across split halves, with its standard error,
    and the split-half reliability of its label effects.

    From half h: p_A^h[j] ∝ pi_A[j] exp(w_A^h[j] / tau) (`memories[h]`, `token_share` = pi_A); on the other
    half: sum_j (p_A^h[j] - pi_A[j]) beta_A^{other}[j], over the labels the other half measured (p and pi
    renormalised over them); Adv_A is the mean over h, its variance from the effects' covariance. The
    reliability is the correlation r of beta^h1 and beta^h2 over the labels both measured, Spearman-Brown
    corrected (2r / (1 + r), a negative r counting as 0); None with fewer than 3 such labels or no spread.
    """
    adv, adv_se, reliability = {}, {}, {}
    for a, share in token_share.items():
        total, var = 0.0, 0.0
        for h in (0, 1):
            other = halves[1 - h]
            have = ~np.isnan(other.beta[a]) & (share > 0)
            if not have.any():
                continue
            logits = np.log(np.where(have, share, 1.0)) + memories[h][a] / tau
            p = np.where(have, np.exp(logits - logits[have].max()), 0.0)
            diff = (p / p.sum() - np.where(have, share, 0.0) / share[have].sum())[have]
            total += float(diff @ other.beta[a][have])
            var += float(diff @ other.cov[a][np.ix_(have, have)] @ diff)
        adv[a], adv_se[a] = total / 2, math.sqrt(max(var, 0.0)) / 2
        both = ~np.isnan(halves[0].beta[a]) & ~np.isnan(halves[1].beta[a])
        b0, b1 = halves[0].beta[a][both], halves[1].beta[a][both]
        r = None
        if both.sum() >= 3 and b0.std() > 0 and b1.std() > 0:
            r = float(np.corrcoef(b0, b1)[0, 1])
        reliability[a] = None if r is None else 2 * max(r, 0.0) / (1 + max(r, 0.0))
    return adv, adv_se, reliability


def _water_fill(weight: np.ndarray, room: np.ndarray, budget: float) -> np.ndarray:
    """Share `budget` in proportion to `weight`, no entry above its `room`; what a full entry cannot take
    is shared out again among the others in proportion."""
    alloc = np.zeros(len(weight))
    free = (room > 0) & (weight > 0)
    left = float(budget)
    while left > 1e-9 * max(budget, 1.0) and free.any():
        idx = np.nonzero(free)[0]
        share = left * weight[idx] / weight[idx].sum()
        full = share >= room[idx]
        if not full.any():
            alloc[idx] += share
            break
        alloc[idx[full]] = room[idx[full]]
        left -= float(room[idx[full]].sum())
        free[idx[full]] = False
    return alloc


def sample_quotas(
    tokens: np.ndarray,
    log_weight: np.ndarray,
    budget: float,
    *,
    tau: float,
    eps: float,
    max_cell_share: float,
) -> tuple[np.ndarray, np.ndarray]:
    """`sample`'s token quota of each cell, and its share q(c) before the cap and the water-filling.

    q(c) = (1 - eps) n(c) exp(log_weight(c) / tau) / Z + eps n(c) / N, log_weight = S(c) + tau ln d(seen(c));
    a cell gets q(c) * budget, at most `max_cell_share` of the budget and at most its own tokens, the rest
    shared out again in proportion to q (water-filling); only when every cell is full at that cap is the cap
    lifted for what is left. The whole corpus when the budget covers it.
    """
    n = np.asarray(tokens, dtype=np.float64)
    if len(n) == 0:
        return n, n
    total = n.sum()
    z = np.where(n > 0, np.log(np.where(n > 0, n, 1.0)) + np.asarray(log_weight) / tau, -np.inf)
    soft = np.exp(z - z.max())
    q = (1.0 - eps) * soft / soft.sum() + eps * n / total
    if budget >= total:
        return n.copy(), q
    alloc = _water_fill(q, np.minimum(n, max_cell_share * budget), budget)
    left = budget - alloc.sum()
    if left > 1e-9 * budget:
        alloc += _water_fill(q, n - alloc, left)
    return alloc, q


def selection_spread(cells: np.ndarray, tokens: np.ndarray) -> tuple[float | None, float | None, int]:
    """Entropy (nats) of a selection's tokens over its label cells, the largest cell's share, the cells."""
    if len(cells) == 0 or tokens.sum() <= 0:
        return None, None, 0
    per_cell = pa.table({"cell": cells, "tokens": tokens}).group_by("cell").aggregate([("tokens", "sum")])
    share = per_cell["tokens_sum"].to_numpy().astype(np.float64)
    share = share[share > 0] / share.sum()
    return float(-(share * np.log(share)).sum()), float(share.max()), len(share)


def _using_agents(method: Callable[..., _T]) -> Callable[..., _T]:
    """Run a Console method with `console_agents` registered (see sql/console.sql)."""

    @functools.wraps(method)
    def wrapped(self: Console, *args: Any, **kwargs: Any) -> _T:
        with self._agents_registered():
            return method(self, *args, **kwargs)

    return wrapped


def _fraction(quota: np.ndarray, tokens: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """The share of a hash range expected to hold `quota` of `tokens` over `docs` documents, with a margin
    of about four standard deviations (a pass that still falls short is run again, wider); 1 = all."""
    f = np.asarray(quota, dtype=np.float64) / np.maximum(np.asarray(tokens, dtype=np.float64), 1.0)
    n = np.maximum(np.asarray(docs, dtype=np.float64), 1.0)
    return np.minimum(1.0, f * 1.05 + 4.0 * np.sqrt(f / n) + 4.0 / n)


def _probe_fraction(m: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """The share of a hash range expected to hold about twice `m` of a label's `docs` documents."""
    return np.minimum(1.0, (2.0 * np.asarray(m) + 16.0) / np.maximum(np.asarray(docs, dtype=np.float64), 1.0))


def _h_threshold(fraction: np.ndarray) -> np.ndarray:
    """The hash value (unsigned 64-bit) below which a `fraction` of hashes fall; everything at 1."""
    f = np.minimum(np.asarray(fraction, dtype=np.float64), 1.0 - 2.0**-52)
    return np.where(np.asarray(fraction) >= 1.0, np.uint64(_H_ALL), (f * 2.0**64).astype(np.uint64))


def _gumbel_threshold(z: np.ndarray, tokens: np.ndarray, target: float) -> float | None:
    """The Gumbel key K above which a cell of log-weight z keeps an expected tokens * (1 - exp(-exp(z - K)))
    (Gumbel-top-k: a document's key is z + Gumbel noise), so that about 1.1 * `target` tokens are kept in
    all; None when that is everything."""
    want = 1.1 * target
    if want >= tokens.sum():
        return None
    lo, hi = float(z.min()) - 60.0, float(z.max()) + 60.0
    for _ in range(200):
        mid = (lo + hi) / 2
        kept = float(tokens @ -np.expm1(-np.exp(z - mid)))
        lo, hi = (mid, hi) if kept > want else (lo, mid)
    return lo


def _sample_key(h: np.ndarray, p: np.ndarray) -> np.ndarray:
    """`sample`'s key u / p of hashes `h` (uint64) in cells of inclusion probability `p`: u = ((h >> 11) + 0.5)
    / 2**53, uniform in (0, 1) and non-decreasing in h (as tests/training/console_oracle.sql computes it)."""
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53 / p


def _sample_cut(
    key: np.ndarray, h: np.ndarray, doc_id: np.ndarray, tokens: np.ndarray, budget: int
) -> np.ndarray:
    """`sample`'s selection of its candidates: the longest prefix of the key order (ties: h, doc_id) within
    the budget; when even the first document is over it, that one alone, so that a budget above zero never
    selects nothing."""
    taken = _prefix_within(key, h, doc_id, tokens, budget)
    if len(taken) == 0 and len(key) and budget > 0:
        taken = _order_by(key, h, doc_id)[:1]
    return taken


def _key_bound(p: np.ndarray, tokens: np.ndarray, docs: np.ndarray, budget: float) -> float:
    """`sample`'s key bound k: the documents of key u / p(c) <= k are expected to hold the budget with a
    margin of about four standard deviations (the tokens a cell gives at k, min(1, k p(c)) of its tokens,
    vary with its documents' lengths); at least 1."""
    if len(p) == 0:
        return 1.0
    mean_len = tokens.sum() / max(float(docs.sum()), 1.0)
    want = 1.05 * budget + 4.0 * math.sqrt(budget * 4.0 * mean_len) + 4.0 * mean_len
    lo, hi = 1.0, 1.0 / max(float(p.min()), 2.0**-52)
    if float(tokens @ np.minimum(1.0, lo * p)) >= want:
        return lo
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if float(tokens @ np.minimum(1.0, mid * p)) >= want else (mid, hi)
    return hi


def _quota_table(
    cells: pa.Table,
    whole: np.ndarray,
    h_max: np.ndarray,
    fine_min: float | None,
    gumbel_tau: float | None = None,
) -> pa.Table:
    """`console_quotas` of a selection pass (see sql/console.sql pass_select). With a Gumbel threshold
    `fine_min`, `h_min`: a hash below which no document of the cell reaches it (its key priority / tau -
    ln(-ln u(h)) grows with h), with a margin, so that the pass computes keys only for the others."""
    n = len(cells)
    h_min = np.zeros(n, dtype=np.uint64)
    if fine_min is not None and gumbel_tau is not None:
        gap = fine_min - cells["priority"].to_numpy().astype(np.float64) / gumbel_tau
        with np.errstate(over="ignore", under="ignore"):
            u_min = np.exp(-np.exp(-gap)) * (1.0 - 1e-9)
        top = np.floor(np.clip(u_min * 2.0**53 - 2.0, 0.0, 2.0**53 - 1))
        h_min = top.astype(np.uint64) << np.uint64(11)
    return pa.table(
        {
            "grp": pa.array(np.arange(n, dtype=np.int32)),
            "cell": cells["cell"],
            "seen": cells["seen"],
            "priority": cells["priority"],
            "level": cells["level"],
            "whole": pa.array(np.asarray(whole, dtype=bool)),
            "h_max": pa.array(np.broadcast_to(h_max, (n,)).astype(np.uint64), pa.uint64()),
            "fine_min": pa.array([fine_min] * n, pa.float64()),
            "h_min": pa.array(h_min, pa.uint64()),
        }
    )


def _order_by(key: np.ndarray | None, h: np.ndarray, doc_id: np.ndarray) -> np.ndarray:
    """np.lexsort((doc_id, h, key)) (no key: all equal), by one sort of the first of key, h that varies;
    the full lexsort only when that one has ties."""
    if len(h) == 0:
        return np.zeros(0, dtype=np.int64)
    if key is not None and (key == key[0]).all():
        key = None
    first = h if key is None else key
    order = np.argsort(first)
    ordered = first[order]
    tied = bool((ordered[1:] == ordered[:-1]).any())
    del ordered
    if tied:
        return np.lexsort((doc_id, h) if key is None else (doc_id, h, key))
    return order


def _prefix_within(
    key: np.ndarray | None, h: np.ndarray, doc_id: np.ndarray, tokens: np.ndarray, budget: float
) -> np.ndarray:
    """The indices of the longest prefix of the order np.lexsort((doc_id, h, key)) (no key: all equal)
    whose `tokens` (each >= 1, so the running sum grows) sum to at most `budget`, in no particular order.
    Only the prefix's end is sorted: the documents below a pivot of the first key that varies come first
    in the order whatever their own order, so when their tokens fit they are taken unsorted and only the
    others are ordered (`_order_by`); else (a pivot too far) everything is."""
    n = len(h)
    if key is not None and n and (key == key[0]).all():
        key = None
    first = h if key is None else key
    total = float(tokens.sum(dtype=np.int64))
    at = int(0.95 * n * min(1.0, budget / max(total, 1.0)))  # a little short of the expected prefix
    if n >= _PARTIAL_SORT_ROWS and 0 < at < n:
        below = first < np.partition(first, at)[at]
        fit = int(tokens[below].sum(dtype=np.int64))
        if fit <= budget:
            head, rest = np.flatnonzero(below), np.flatnonzero(~below)
            del below
            order = rest[_order_by(None if key is None else key[rest], h[rest], doc_id[rest])]
            cum = fit + np.cumsum(tokens[order], dtype=np.int64)
            return np.concatenate([head, order[: int(np.searchsorted(cum, budget, side="right"))]])
    order = _order_by(key, h, doc_id)
    cum = np.cumsum(tokens[order], dtype=np.int64)
    return order[: int(np.searchsorted(cum, budget, side="right"))]


def _in_doc_order(rows: Mapping[str, np.ndarray], *taken: np.ndarray) -> np.ndarray:
    """The indices `taken` (several arrays, in any order, no index twice) of the pass's `rows` in doc_id
    order: pass_select gives its rows in doc_id order, so that is index order."""
    mask = np.zeros(len(rows["doc_id"]), dtype=bool)
    for index in taken:
        mask[index] = True
    order = np.flatnonzero(mask)
    del mask
    doc_id = rows["doc_id"]
    if len(doc_id) > 1 and (doc_id[1:] < doc_id[:-1]).any():
        order = order[np.argsort(doc_id[order], kind="stable")]
    return order


def _shard_ids(doc_id: np.ndarray, taken: np.ndarray) -> list[int]:
    """The shards of the documents of index `taken`, SNAPSHOT_ROW_GROUP documents at a time."""
    used: set[int] = set()
    for at in range(0, len(taken), SNAPSHOT_ROW_GROUP):
        used.update(np.unique(doc_id[taken[at : at + SNAPSHOT_ROW_GROUP]] >> 32).tolist())
    return sorted(used)


def _snapshot_parts(cells: pa.Table, rows: Mapping[str, np.ndarray], taken: np.ndarray) -> Iterator[pa.Table]:
    """A selection's snapshot rows (SNAPSHOT_SCHEMA), SNAPSHOT_ROW_GROUP at a time: the pass's `rows`
    (doc_id, row_group, grp) of index `taken` (in doc_id order), each with its cell's priority."""
    priority = cells["priority"].to_numpy()
    for at in range(0, len(taken), SNAPSHOT_ROW_GROUP):
        index = taken[at : at + SNAPSHOT_ROW_GROUP]
        doc_id = rows["doc_id"][index]
        yield pa.table(
            {
                "doc_id": pa.array(doc_id),
                "shard_id": pa.array((doc_id >> 32).astype(np.int32)),
                "row_idx": pa.array((doc_id & 0xFFFFFFFF).astype(np.int32)),
                "row_group": pa.array(rows["row_group"][index]),
                "priority": pa.array(priority[rows["grp"][index]]),
            }
        )


class Console:
    """One run's console over a catalog: its state lives in the catalog tables of `sql/console.sql`.

    It keeps no per-document state: selection and probes start from the catalog's cell statistics
    (documents and tokens per label tuple, `cell_stats`) and the run's sparse seen counts, decide each
    cell's quota over cells only, then take the documents in one streaming pass over the catalog's
    `doc_cells` (each document's packed label tuple, on disk; `_pass`).
    It works on its own cursor of the catalog (`Catalog.cursor()`); close it (or use it as a context
    manager) when done.
    """

    def __init__(self, catalog: Catalog, run_id: str, config: ConsoleConfig | None = None):
        self.catalog = catalog
        self.run_id = run_id
        self.db = catalog.cursor()
        self.db.run(SQL_FILE, "schema")
        stored = self._stored_run()
        self.config = self._resolve(config or (stored[0] if stored else ConsoleConfig()))
        if stored and stored[0] != self.config:
            diff = ", ".join(
                f"{k}: {v!r} recorded, {getattr(self.config, k)!r} given"
                for k, v in stored[0].to_dict().items()
                if v != getattr(self.config, k)
            )
            raise ConsoleError(f"run {run_id!r} exists with another config ({diff}); use a new run id")
        self._agents = self.db.arrow(SQL_FILE, "agents_table", agents=self.config.agents)
        self.agent_labels: list[tuple[str, int, int]] = list(
            zip(*(self._agents[c].to_pylist() for c in ("agent", "num_labels", "stride")))
        )
        _, num_labels, stride = self.agent_labels[-1]
        if stride * (num_labels + 1) > _MAX_CELLS:
            raise ConsoleError(f"the agents {self.config.agents} have too many label combinations (> 2**53)")
        self._with_agents = 0

    @contextlib.contextmanager
    def _agents_registered(self) -> Iterator[None]:
        """`console_agents` registered for the length of one call (re-entrant), and DuckDB's memory
        capped at _DUCKDB_MEMORY meanwhile (`memory_capped`): its passes read every document's cells, which
        DuckDB would otherwise keep in memory."""
        if self._with_agents:
            yield
            return
        self._with_agents += 1
        try:
            with self.db.registered("console_agents", self._agents), self.db.memory_capped(_DUCKDB_MEMORY):
                yield
        finally:
            self._with_agents -= 1

    @property
    def v2(self) -> bool:
        """Whether this run's console is Version 2 (`preset: v2`) rather than the paper's."""
        return self.config.preset == "v2"

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    # ----- run and state ----------------------------------------------------------------------------
    @_using_agents
    def start(self, init_from: str | None = None) -> None:
        """Create the run and its round-0 state; for an existing run, do nothing: resume.

        Round 0: w = the config prior (else 0) per agent, theta uniform; with `init_from`, the last w and
        theta of that run replace them for the agents the two runs share.
        """
        stored = self._stored_run()
        if stored is not None:
            source = stored[1]
            if init_from not in (None, source):
                raise ConsoleError(
                    f"run {self.run_id!r} exists, initialised from {source!r}, not {init_from!r}"
                )
            return
        if init_from is not None and not self._run_exists(init_from):
            raise ConsoleError(f"cannot initialise from run {init_from!r}: no such run")
        agents = self.config.agents
        theta = np.full(len(agents), 1.0 / len(agents))
        if init_from is not None:
            source_theta = dict(self.db.run(SQL_FILE, "latest_theta", run_id=init_from))
            theta = np.array([source_theta.get(a, 1.0 / len(agents)) for a in agents])
            theta = project_to_simplex(theta, self.config.theta_floor)
        prior = pa.Table.from_pylist(
            [
                {"agent": agent, "name": name, "w": value}
                for agent, values in self.config.prior.items()
                for name, value in values.items()
            ],
            schema=pa.schema([("agent", pa.string()), ("name", pa.string()), ("w", pa.float64())]),
        )
        theta_rows = pa.table(
            {"agent": agents, "theta": theta, "reward": pa.nulls(len(agents), pa.float64())}
        )
        with self.db.transaction():
            self.db.run(
                SQL_FILE, "insert_run", run_id=self.run_id, config=self._config_json(), init_from=init_from
            )
            strength = self.config.prior_strength if self.v2 else None
            with self.db.registered("console_prior", prior):
                self.db.run(
                    SQL_FILE, "init_memory", run_id=self.run_id, init_from=init_from, prior_strength=strength
                )
            with self.db.registered("console_theta", theta_rows):
                self.db.run(SQL_FILE, "insert_theta", run_id=self.run_id, round=0)

    def state(self, round: int | None = None) -> ConsoleState:
        """The state after `round` (the last recorded round at or before it; default: the latest)."""
        at = self._state_round(_LATEST if round is None else round)
        w: dict[str, dict[str, float]] = {a: {} for a in self.config.agents}
        for agent, name, value in self.db.run(SQL_FILE, "state_memory", run_id=self.run_id, round=at):
            w[agent][name] = value
        theta = dict(self.db.run(SQL_FILE, "theta_at", run_id=self.run_id, round=at))
        return ConsoleState(at, w, {a: theta[a] for a in self.config.agents})

    # ----- probes and learning ----------------------------------------------------------------------
    @_using_agents
    def draw_probes(self, round: int) -> pa.Table:
        """The probe documents of `round` (doc_id, shard_id, row_idx, row_group, tokens), deterministic, one
        row per document; documents with null or empty text are never drawn.

        v2: for every agent and every label that has documents, `probes_per_label` documents drawn uniformly
        from that label (fewer if it has fewer), each (agent, label) stratum seeded by (seed, round, agent,
        label) on its own. Paper: the same per label, with one hash seeded by (seed, round) for all agents,
        so that the union stays small. Either way the draw is the `probes_per_label` smallest hashes of each
        label, taken in one pass over the documents (`_draw`).
        """
        self._require_started()
        drawn = self._draw(round)
        drawn = drawn.take(pa.array(np.unique(drawn["doc_id"].to_numpy(), return_index=True)[1]))
        doc_id = drawn["doc_id"].to_numpy()
        return pa.table(
            {
                "doc_id": drawn["doc_id"],
                "shard_id": pa.array((doc_id >> 32).astype(np.int32)),
                "row_idx": pa.array((doc_id & 0xFFFFFFFF).astype(np.int32)),
                "row_group": drawn["row_group"],
                "tokens": drawn["tokens"],
            }
        )

    @_using_agents
    def draw_strata(self, round: int) -> pa.Table:
        """v2: which (agent, label_id) stratum drew which doc_id in `round` (the records behind draw_probes)."""
        if not self.v2:
            raise ConsoleError("probe strata are Version 2's (console.preset: v2)")
        self._require_started()
        return self._draw(round).select(["agent", "label_id", "doc_id"])

    def _draw(self, round: int) -> pa.Table:
        """The round's probe draw (agent, label_id, doc_id, row_group, tokens), sorted so: the one recorded
        in `probe_draws` when the catalog's documents and scores are as they were then (`Catalog.cells_key`),
        else drawn (`_draw_pass`) and recorded (unless the catalog is read-only), so that draw_probes,
        draw_strata and update of a round pay for one pass between them."""
        key = self.catalog.cells_key()
        params = {"run_id": self.run_id, "round": round, "cells_key": key}
        stored = self.db.arrow(SQL_FILE, "stored_draw", **params)
        if stored.num_rows:
            return stored
        drawn = self._draw_pass(round)
        if not getattr(self.catalog, "read_only", False):
            with self.db.transaction(), self.db.registered("console_draw", drawn):
                self.db.run(SQL_FILE, "record_draw", **params)
        return drawn

    def _draw_pass(self, round: int) -> pa.Table:
        """The round's probe draw in one pass over the documents. Each (agent, label) keeps the m smallest
        of its hash among its documents (v2: each stratum's own hash; paper: one hash for all). Over cells
        only, each label gets a hash threshold expected to hold about twice m of its documents; one pass
        keeps the documents under their labels' thresholds; a label whose candidates fall short of m (and
        whose threshold is not already everything) is drawn again with a wider one."""
        cfg = self.config
        m = cfg.probes_per_label
        cells = self._cells()
        cell = cells["cell"].to_numpy()
        agents = self.agent_labels
        label_of = [(cell // stride) % (n + 1) - 1 for _, n, stride in agents]
        size = []  # documents per label, per agent
        for (_, n, _), lab in zip(agents, label_of):
            size.append(
                np.bincount(lab[lab >= 0], weights=cells["num_docs"].to_numpy()[lab >= 0], minlength=n)
            )
        widen = [np.ones(n) for _, n, _ in agents]
        hash_sql = "stratum_hash" if self.v2 else "probe_hash"
        hashes = ", ".join(
            fragment(SQL_FILE, hash_sql).format(
                i=i, agent_lit=quote_literal(a), stride=stride, num_labels_1=n + 1
            )
            for i, (a, n, stride) in enumerate(agents)
        )
        within = " OR ".join(fragment(SQL_FILE, "probe_within").format(i=i) for i in range(len(agents)))
        while True:
            h_max = [
                _h_threshold(np.where(size[i] > 0, _probe_fraction(m * widen[i], size[i]), 0.0))
                for i in range(len(agents))
            ]
            quotas = {"cell": cells["cell"]}
            for i, lab in enumerate(label_of):
                per_cell = np.where(lab >= 0, h_max[i][np.maximum(lab, 0)], 0).astype(np.uint64)
                quotas[f"h_max{i}"] = pa.array(per_cell, pa.uint64())
            with self.db.registered("console_quotas", pa.table(quotas)):
                rows = self._pass(
                    "pass_probes",
                    fill={"hashes": hashes, "within": within},
                    seed=cfg.seed,
                    round=round,
                    with_seen=False,
                )
            rows_cell = rows["cell"].to_numpy()
            strata, short = [], False
            for i, (agent, n, stride) in enumerate(agents):
                lab = (rows_cell // stride) % (n + 1) - 1
                h = rows[f"h{i}"].to_numpy()
                for j in range(n):
                    mine = np.nonzero((lab == j) & (h <= h_max[i][j]))[0]
                    if len(mine) < min(m, size[i][j]) and h_max[i][j] < _H_ALL:
                        widen[i][j] *= 4
                        short = True
                        continue
                    strata.append((agent, j, mine[np.argsort(h[mine], kind="stable")[:m]]))
            if not short:
                break
        taken = pa.array(np.concatenate([idx for *_, idx in strata] or [np.zeros(0, np.int64)]))
        table = pa.table(
            {
                "agent": pa.array([a for a, _, idx in strata for _ in idx], pa.string()),
                "label_id": pa.array([j for _, j, idx in strata for _ in idx], pa.int64()),
                "doc_id": rows["doc_id"].take(taken),
                "row_group": rows["row_group"].take(taken).cast(pa.int32()),
                "tokens": rows["tokens"].take(taken).cast(pa.int32()),
            }
        )
        return table.sort_by([("agent", "ascending"), ("label_id", "ascending"), ("doc_id", "ascending")])

    @_using_agents
    def update(self, round: int, probe_rewards: Mapping[int, float]) -> ConsoleState:
        """Record a round's probe rewards (already standardised) and learn from them; returns the new state.

        v2: one joint fit of the label effects, precision-weighted memories, theta by the agents' split-half
        advantage over random (`_learn_v2`). Paper: agent memories take one step per round toward their
        labels' mean rewards, then theta moves toward the agents whose preferred labels earned more (see
        `learn_round`). Re-running a recorded round replaces it.
        """
        if round < 1:
            raise ConsoleError(f"update rounds start at 1 (round 0 is the initial state), got {round}")
        if not all(math.isfinite(r) for r in probe_rewards.values()):
            raise ConsoleError(f"round {round}: probe rewards must be finite numbers")
        previous = self._state_round(round - 1)
        rewards = pa.table(
            {
                "doc_id": pa.array(list(probe_rewards), pa.int64()),
                "reward": pa.array(list(probe_rewards.values()), pa.float64()),
            }
        )
        cfg = self.config
        if self.v2:
            # the round's draw (as draw_probes recorded it): which strata drew each probe; the cells' sizes
            strata = self._draw(round).select(["agent", "label_id", "doc_id"])
            counted = self._cells()
        with self.db.transaction():
            self.db.run(SQL_FILE, "delete_round", run_id=self.run_id, round=round)
            with self.db.registered("console_rewards", rewards):
                self.db.run(SQL_FILE, "insert_probes", run_id=self.run_id, round=round)
                if self.v2:
                    with self.db.registered("console_strata", strata):
                        self.db.run(SQL_FILE, "insert_strata", run_id=self.run_id, round=round)
            if self.v2:
                with self.db.registered("console_counted", counted):
                    self._learn_v2(round, previous)
                return self.state(round)
            measured = {
                (agent, label): (reward, n)
                for agent, label, reward, n in self.db.run(
                    SQL_FILE, "label_rewards", run_id=self.run_id, round=round
                )
            }
            memory = self.db.run(SQL_FILE, "memory_at", run_id=self.run_id, round=previous)
            theta = dict(self.db.run(SQL_FILE, "theta_at", run_id=self.run_id, round=previous))
            labels = {a: [label for agent, label, _ in memory if agent == a] for a in cfg.agents}
            w = {a: np.array([v for agent, _, v in memory if agent == a]) for a in cfg.agents}
            r = {a: np.array([measured.get((a, j), (np.nan, 0))[0] for j in labels[a]]) for a in cfg.agents}
            new_w, agent_reward, new_theta = learn_round(
                w,
                r,
                {a: theta[a] for a in cfg.agents},
                eta_agent=cfg.effective_eta_agent,
                eta_theta=cfg.effective_eta_theta,
                tau_p=cfg.tau_p,
                theta_floor=cfg.theta_floor,
            )
            memory_rows = pa.Table.from_pylist(
                [
                    {
                        "agent": a,
                        "label_id": j,
                        "w": float(new_w[a][i]),
                        "reward": measured.get((a, j), (None, 0))[0],
                        "num_probes": measured.get((a, j), (None, 0))[1],
                    }
                    for a in cfg.agents
                    for i, j in enumerate(labels[a])
                ]
            )
            theta_rows = pa.Table.from_pylist(
                [{"agent": a, "theta": new_theta[a], "reward": agent_reward[a]} for a in cfg.agents]
            )
            with self.db.registered("console_memory", memory_rows):
                self.db.run(SQL_FILE, "insert_memory", run_id=self.run_id, round=round)
            with self.db.registered("console_theta", theta_rows):
                self.db.run(SQL_FILE, "insert_theta", run_id=self.run_id, round=round)
        return self.state(round)

    # ----- selection --------------------------------------------------------------------------------
    @_using_agents
    def select(
        self, round: int, budget_tokens: int, path: str | Path, mode: SelectionMode | None = None
    ) -> Path:
        """Select the documents to train on after `round` (with the state of that round) into a snapshot.

        Priorities are computed per cell (label tuple, seen count) in SQL. v2: S(c) = sum_A theta_A *
        w_A[l_A(c)] (unlabelled: 0) and the priority S(c) + t ln d(seen) (t = tau for `sample`, gumbel_tau
        otherwise). Paper: S(x) = (sum_A theta_A * w_hat_A[l_A(x)]) / (1 + lambda * c(x)), w_hat min-max
        normalised, an unlabelled document counting 0.5 (neither preferred nor avoided).

        `sample` (v2 only): per-cell token quotas from q(c) (`sample_quotas`), then sequential Poisson
        sampling (`_sample_rows`): no length preference, the budget up to one document. `topk`:
        highest priority first, equal priorities (cells included) in an order seeded by (seed, round) or by
        the tie-break agent's raw score; `gumbel`: Gumbel-top-k over priority / gumbel_tau; `random`: a
        seeded uniform order (the warm-up). These take the longest prefix of their order within the budget
        (never over it). `mode` overrides the config's (e.g. `random` for the warm-up). Rows are written in
        doc_id order; the reader shuffles. The selection's spread over label cells (entropy, largest share)
        is recorded with it.

        It runs in three steps, with no per-document state: (1) each cell's quota (or, for the ordered
        modes, which cells go whole and which share the boundary of the order), over the cells only; (2)
        the documents, in one streaming pass over `doc_cells` that keeps, of each cell, a hash-ordered prefix
        that holds its share of the budget (`_pass`); (3) the exact cut, over those candidates only, then the
        snapshot. The selection is the same document for document as ordering every document would give.
        """
        mode = mode or self.config.mode
        if mode not in MODES:
            raise ConsoleError(f"unknown selection mode {mode!r}; use one of {', '.join(MODES)}")
        if mode == "sample" and not self.v2:
            raise ConsoleError("selection mode 'sample' is Version 2's (console.preset: v2)")
        self._require_started()
        state_round = self._state_round(round)
        cfg = self.config
        params = {"run_id": self.run_id, "state_round": state_round, "decay_lambda": cfg.decay_lambda}
        with self.db.registered("console_counted", self._cells(with_seen=True)):
            if self.v2:
                temp = cfg.tau if mode == "sample" else cfg.gumbel_tau
                cells = self.db.arrow(SQL_FILE, "cells_v2", **params, mode=mode, temp=temp)
            else:
                cells = self.db.arrow(SQL_FILE, "cells", **params, mode=mode)
        if mode == "sample":
            cells, rows, taken = self._sample_rows(cells, round, budget_tokens)
        else:
            cells, rows, taken = self._ordered_rows(cells, round, budget_tokens, mode)
        taken_tokens = rows.pop("tokens")[taken]
        tokens = int(taken_tokens.sum(dtype=np.int64))
        entropy, top_share, num_cells = selection_spread(
            cells["cell"].to_numpy()[rows["grp"][taken]], taken_tokens
        )
        del taken_tokens
        shards = {s.shard_id: ShardRef.of(s) for s in self.catalog.shards()}
        path = write_snapshot_parts(
            path,
            _snapshot_parts(cells, rows, taken),
            _shard_ids(rows["doc_id"], taken),
            shards,
            root=self.catalog.dir,
        )
        self.db.run(
            SQL_FILE,
            "insert_selection",
            run_id=self.run_id,
            round=round,
            path=str(path),
            num_docs=len(taken),
            tokens=tokens,
            mode=mode,
            budget=budget_tokens,
            entropy=entropy,
            top_share=top_share,
            num_cells=num_cells,
        )
        return path

    def _sample_rows(
        self, cells: pa.Table, round: int, budget_tokens: int
    ) -> tuple[pa.Table, dict[str, np.ndarray], np.ndarray]:
        """`sample`: per-cell quotas (`sample_quotas`), then sequential Poisson sampling. A document of cell
        c has inclusion probability p(c) = quota(c) / tokens(c), whatever its length; its key is u / p(c),
        with u uniform from a hash seeded by (seed, round), and the selection is the longest prefix of the
        key order within the budget. So a document's chance of being taken does not depend on its length
        (up to the cut), each cell's expected tokens are about its quota, and the round's tokens are the
        budget up to one document.
        Returns the cells with a quota, the pass's candidates (`_select_pass`) and the selected ones' indices
        in doc_id order."""
        cfg = self.config
        tokens = cells["tokens"].to_numpy().astype(np.float64)
        score = cells["score"].to_numpy().astype(np.float64)
        log_weight = score - cfg.tau * np.log1p(cfg.decay_lambda * cells["seen"].to_numpy())
        quota, _ = sample_quotas(
            tokens, log_weight, budget_tokens, tau=cfg.tau, eps=cfg.eps, max_cell_share=cfg.max_cell_share
        )
        keep = quota > 0
        cells, quota, tokens = cells.filter(pa.array(keep)), quota[keep], tokens[keep]
        p = np.minimum(1.0, quota / np.maximum(tokens, 1.0))
        # the candidates are the documents of u <= k p(c) (a hash threshold per cell); k is chosen to hold
        # the budget with a margin. Of them, those of key below the least key a document left out can have
        # (that of the first hash above its cell's threshold) are the first documents of the whole key order;
        # a pass whose first documents fall short of the budget is run again, wider.
        k = _key_bound(p, tokens, cells["num_docs"].to_numpy(), float(budget_tokens))
        while True:
            frac = np.minimum(1.0, k * p)
            whole, h_max = frac >= 1.0, _h_threshold(frac)
            rows = self._select_pass(_quota_table(cells, whole, h_max, None), round, "sample")
            key = _sample_key(rows["h"], p[rows["grp"]])
            edge = _sample_key(h_max[~whole] + np.uint64(1), p[~whole]).min() if not whole.all() else np.inf
            inside = None if edge == np.inf else np.flatnonzero(key < edge)
            got = (
                rows["tokens"].sum(dtype=np.int64)
                if inside is None
                else rows["tokens"][inside].sum(dtype=np.int64)
            )
            if got >= budget_tokens or whole.all():
                break
            k *= 2.0
            del rows, key, inside  # before the wider pass
        if inside is None or len(inside) == len(key):
            taken = _sample_cut(key, rows["h"], rows["doc_id"], rows["tokens"], budget_tokens)
        else:
            columns = (key[inside], rows["h"][inside], rows["doc_id"][inside], rows["tokens"][inside])
            taken = inside[_sample_cut(*columns, budget_tokens)]
            del columns
        return cells, rows, _in_doc_order(rows, taken)

    def _ordered_rows(
        self, cells: pa.Table, round: int, budget_tokens: int, mode: str
    ) -> tuple[pa.Table, dict[str, np.ndarray], np.ndarray]:
        """`topk`, `gumbel`, `random`: the longest prefix of the mode's order within the budget. Levels
        (topk: distinct priorities; the others: one) that fit whole are taken whole; in the first that
        does not, its documents in order (fine descending, then h, then doc_id) up to what is left.
        Returns the cells up to that level, the pass's candidates (`_select_pass`) and the selected ones'
        indices in doc_id order."""
        cfg = self.config
        level = cells["level"].to_numpy()
        tokens = cells["tokens"].to_numpy().astype(np.int64)
        levels, inverse = np.unique(level, return_inverse=True)
        upto = np.cumsum(np.bincount(inverse, weights=tokens).astype(np.int64))
        over = np.nonzero(upto > budget_tokens)[0]
        if len(over) == 0:
            boundary, remaining = np.inf, 0
        else:
            boundary = levels[over[0]]
            remaining = budget_tokens - (int(upto[over[0] - 1]) if over[0] > 0 else 0)
        keep = level <= boundary
        cells = cells.filter(pa.array(keep))
        whole = cells["level"].to_numpy() < boundary
        edge = ~whole
        edge_tokens = float(cells["tokens"].to_numpy()[edge].sum())
        edge_docs = float(cells["num_docs"].to_numpy()[edge].sum())
        by_score = mode == "topk" and cfg.tie_break != "hash"
        widen = 1.0
        while True:
            fine_min = None
            frac = np.ones(len(cells))
            if mode == "gumbel" and edge.any():
                fine_min = _gumbel_threshold(
                    cells["priority"].to_numpy()[edge] / cfg.gumbel_tau,
                    cells["tokens"].to_numpy()[edge].astype(np.float64),
                    remaining * widen,
                )
            elif not by_score and edge.any():
                frac = np.full(
                    len(cells),
                    float(
                        _fraction(
                            np.array([remaining * widen]), np.array([edge_tokens]), np.array([edge_docs])
                        )[0]
                    ),
                )
            quotas = _quota_table(cells, whole, _h_threshold(frac), fine_min, cfg.gumbel_tau)
            rows = self._select_pass(quotas, round, mode)
            in_edge = edge[rows["grp"]]
            got = int(rows["tokens"][in_edge].sum())
            complete = fine_min is None and (frac >= 1.0).all()
            if got >= remaining or complete:
                break
            widen *= 4
            del rows, in_edge  # before the wider pass
        # The edge's candidates in order (when it holds every candidate, as in gumbel, without copies);
        # h and fine are not needed past the order.
        every = bool(in_edge.all())
        edge_at = None if every else np.flatnonzero(in_edge)
        key = rows.pop("fine", None)
        if key is not None:  # fine descending, a missing one last
            key = (key if every else key[edge_at]).astype(np.float64, copy=False)
            np.negative(key, out=key)
            key[np.isnan(key)] = np.inf
        h = rows.pop("h")
        taken = _prefix_within(
            key,
            h if every else h[edge_at],
            rows["doc_id"] if every else rows["doc_id"][edge_at],
            rows["tokens"] if every else rows["tokens"][edge_at],
            remaining,
        )
        del key, h
        if edge_at is not None:
            taken = edge_at[taken]
            del edge_at
        return cells, rows, _in_doc_order(rows, np.flatnonzero(~in_edge), taken)

    def _select_pass(self, quotas: pa.Table, round: int, mode: str) -> dict[str, np.ndarray]:
        """The candidates of a selection (`pass_select`) as numpy columns: doc_id, row_group, tokens, grp,
        h, and `fine` (gumbel, topk by score) where the mode needs it."""
        cfg = self.config
        by_score = mode == "topk" and cfg.tie_break != "hash"
        extra = ["fine"] if mode == "gumbel" or by_score else []
        names = ["doc_id", "row_group", "tokens", "grp", "h", *extra]
        pieces: dict[str, list[np.ndarray]] = {name: [] for name in names}
        with self.db.registered("console_quotas", quotas):
            # each range's rows copied to numpy as it comes, its Arrow table dropped: no Arrow copy of
            # the whole pass is ever held
            for table in self._pass_tables(
                "pass_select",
                fill={"extra": "".join(f", {c}" for c in extra)},
                seed=cfg.seed,
                round=round,
                mode=mode,
                by_score=by_score,
                gumbel_tau=cfg.gumbel_tau,
                with_tie=True,
            ):
                for name in names:
                    pieces[name].append(table.column(name).to_numpy())
                del table
        # one column at a time, its pieces dropped once joined
        return {name: np.concatenate(pieces.pop(name)) for name in names}

    @_using_agents
    def record_consumed(
        self, doc_ids: Iterable[int] | pa.Array | pa.ChunkedArray | np.ndarray, round: int | None = None
    ) -> None:
        """Add one to the seen count c(x) of each consumed document, per occurrence. Call it per round or
        every few hundred steps: each call is one statement over the run's seen counts. With `round`, the
        round's consumption is recorded once: a crashed run that replays the round does not count it twice."""
        self._require_started()
        if (
            round is not None
            and self.db.run(SQL_FILE, "round_consumed", run_id=self.run_id, round=round)[0][0]
        ):
            return
        if isinstance(doc_ids, pa.Array | pa.ChunkedArray):
            ids = doc_ids.cast(pa.int64())
        else:
            ids = pa.array(doc_ids if isinstance(doc_ids, np.ndarray) else list(doc_ids), pa.int64())
        consumed = pa.table({"doc_id": ids})
        with self.db.transaction(), self.db.registered("console_consumed", consumed):
            self.db.run(SQL_FILE, "record_consumed", run_id=self.run_id)
            if round is not None:
                self.db.run(SQL_FILE, "mark_round_consumed", run_id=self.run_id, round=round)

    # ----- internals --------------------------------------------------------------------------------
    def _learn_v2(self, round: int, previous: int) -> None:
        """Version 2's learning from the round's recorded probes (inside update's transaction): label
        effects, memories, theta; each written with its standard error and the agent's reliability."""
        cfg = self.config
        agents = cfg.agents
        num_labels = {a: k for a, k, _ in self.agent_labels}
        rows = self.db.arrow(SQL_FILE, "probe_labels", run_id=self.run_id, round=round)
        n = rows.num_rows // len(agents)
        doc_ids = rows["doc_id"].to_numpy()[:: len(agents)]
        rewards = rows["reward"].to_numpy()[:: len(agents)].astype(np.float64)
        labels = {
            a: rows["label_id"].to_numpy()[i :: len(agents)].astype(np.int64) for i, a in enumerate(agents)
        }
        drawn = {
            a: rows["drawn"].to_numpy(zero_copy_only=False)[i :: len(agents)] for i, a in enumerate(agents)
        }
        docs = {a: np.zeros(num_labels[a]) for a in agents}
        share = {a: np.zeros(num_labels[a]) for a in agents}
        for agent, label, count, tokens in self.db.run(SQL_FILE, "label_sizes"):
            docs[agent][label], share[agent][label] = count, tokens
        share = {a: t / t.sum() if t.sum() > 0 else t for a, t in share.items()}
        # Inclusion probability of each probe: drawn by at least one of its strata, independently per agent.
        missed = np.ones(n)
        for a in agents:
            lab = labels[a]
            size = np.where(lab >= 0, docs[a][np.maximum(lab, 0)], 0.0)
            p = np.where(size > 0, np.minimum(1.0, cfg.probes_per_label / np.maximum(size, 1.0)), 0.0)
            missed *= 1.0 - p
        weights = 1.0 / np.maximum(1.0 - missed, 1e-12)

        def effects(keep: np.ndarray) -> Effects:
            sub = {a: v[keep] for a, v in labels.items()}
            if cfg.effects == "marginal":
                return marginal_effects(
                    sub, num_labels, rewards[keep], {a: v[keep] for a, v in drawn.items()}
                )
            return joint_effects(sub, num_labels, rewards[keep], weights[keep], cfg.ridge_lambda, share)

        memory = self.db.run(SQL_FILE, "memory_precision_at", run_id=self.run_id, round=previous)
        w = {a: np.zeros(num_labels[a]) for a in agents}
        precision = {a: np.zeros(num_labels[a]) for a in agents}
        for agent, label, mem_w, prec in memory:
            w[agent][label], precision[agent][label] = mem_w, prec
        theta = dict(self.db.run(SQL_FILE, "theta_at", run_id=self.run_id, round=previous))
        whole = effects(np.ones(n, dtype=bool))
        half = dict(self.db.run(SQL_FILE, "half_of_probes", seed=cfg.seed, run_id=self.run_id, round=round))
        in_first = np.array([half[d] == 0 for d in doc_ids], dtype=bool)
        halves = (effects(in_first), effects(~in_first))
        half_w = tuple(
            {a: update_memory(w[a], precision[a], h.beta[a], h.se[a], cfg.forgetting)[0] for a in agents}
            for h in halves
        )
        adv, adv_se, reliability = advantage_over_random(halves, half_w, share, cfg.tau)
        new_w, new_precision = w, precision
        if not cfg.fixed_weights:
            updated = {
                a: update_memory(w[a], precision[a], whole.beta[a], whole.se[a], cfg.forgetting)
                for a in agents
            }
            new_w = {a: u[0] for a, u in updated.items()}
            new_precision = {a: u[1] for a, u in updated.items()}
        new_theta = np.array([theta[a] for a in agents])
        if cfg.effective_eta_theta > 0:
            new_theta = hedge_theta(
                new_theta,
                np.array([adv[a] for a in agents]),
                np.array([adv_se[a] for a in agents]),
                eta=cfg.effective_eta_theta,
                s0=cfg.s0,
                floor=cfg.theta_floor,
            )

        def value(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        memory_rows = pa.Table.from_pylist(
            [
                {
                    "agent": a,
                    "label_id": j,
                    "w": float(new_w[a][j]),
                    "reward": value(whole.beta[a][j]),
                    "num_probes": int(whole.count[a][j]),
                    "se": value(whole.se[a][j]),
                    "precision": float(new_precision[a][j]),
                }
                for a, j, _, _ in memory
            ]
        )
        theta_rows = pa.Table.from_pylist(
            [
                {
                    "agent": a,
                    "theta": float(t),
                    "reward": adv[a],
                    "reward_se": adv_se[a],
                    "reliability": reliability[a],
                }
                for a, t in zip(agents, new_theta)
            ]
        )
        with self.db.registered("console_memory", memory_rows):
            self.db.run(SQL_FILE, "insert_memory", run_id=self.run_id, round=round)
        with self.db.registered("console_theta", theta_rows):
            self.db.run(SQL_FILE, "insert_theta", run_id=self.run_id, round=round)

    def _run_exists(self, run_id: str) -> bool:
        return self.db.run(SQL_FILE, "run_row", run_id=run_id) != []

    def _stored_run(self) -> tuple[ConsoleConfig, str | None] | None:
        rows = self.db.run(SQL_FILE, "run_row", run_id=self.run_id)
        if not rows:
            return None
        row = rows[0]
        # A run recorded before Version 2 has no preset in its config: it ran the paper's console.
        return ConsoleConfig.from_dict({"preset": "paper", **json.loads(row[0])}), row[1]

    def _config_json(self) -> str:
        return json.dumps(self.config.to_dict(), sort_keys=True)

    def _state_round(self, round: int) -> int:
        """The last recorded round at or before `round`; raises if the run has none."""
        at = self.db.run(SQL_FILE, "state_round", run_id=self.run_id, round=round)[0][0]
        if at is None:
            raise ConsoleError(f"run {self.run_id!r} has no state at round {round}; call start() first")
        return at

    def _require_started(self) -> None:
        self._state_round(_LATEST)

    def _resolve(self, config: ConsoleConfig) -> ConsoleConfig:
        """Check a config against the catalog and fill in the agent list."""
        config.check()
        registered = [name for name, _, _ in self.catalog.agent_rows()]
        agents = list(config.agents) if config.agents is not None else registered
        known = ", ".join(registered) or "none yet"
        if not agents:
            raise ConsoleError(f"no agents to select with in {self.catalog.dir} (agents: {known})")
        for name in [*agents, *([] if config.tie_break == "hash" else [config.tie_break]), *config.prior]:
            if name not in registered:
                raise ConsoleError(f"no agent named {name!r} in {self.catalog.dir} (agents: {known})")
        if len(set(agents)) != len(agents):
            raise ConsoleError(f"agents listed twice in {agents}")
        labels: dict[str, set[str]] = {}
        for agent, name in self.db.run(SQL_FILE, "label_names"):
            labels.setdefault(agent, set()).add(name)
        for agent in agents:
            if agent not in labels:
                raise ConsoleError(f"agent {agent!r} declares no labels: it cannot take part in selection")
        for agent, values in config.prior.items():
            if agent not in agents:
                raise ConsoleError(f"the prior names agent {agent!r}, which is not one of the run's {agents}")
            unknown = sorted(set(values) - labels[agent])
            if unknown:
                raise ConsoleError(f"the prior of agent {agent!r} names unknown labels {unknown}")
        return dataclasses.replace(config, agents=agents)

    def _cells(self, *, with_seen: bool = False) -> pa.Table:
        """The run's cells (cell, seen, num_docs, tokens): the catalog's cell statistics re-packed for the
        run's agents (recounted first if stale); `with_seen`, each cell split by the run's seen counts: its
        consumed documents (the only ones with a seen-count row) are counted in one pass over them alone
        and moved out of the cell's seen = 0 group. With a `bytes_per_token` other than the catalog's
        TOKEN_BYTES the cells are counted in one pass over `doc_cells`; over a read-only catalog whose
        statistics are stale (`Catalog.ensure_cells`), in one pass over every agent's scores."""
        schema = pa.schema(
            [("cell", pa.int64()), ("seen", pa.int32()), ("num_docs", pa.int64()), ("tokens", pa.int64())]
        )
        if self.config.bytes_per_token != TOKEN_BYTES or not self.catalog.ensure_cells():
            counted = self._pass("pass_counts", with_seen=with_seen).select(schema.names)
            counted = counted.group_by(["cell", "seen"]).aggregate([("num_docs", "sum"), ("tokens", "sum")])
            return (
                counted.rename_columns(["cell", "seen", "num_docs", "tokens"])
                .cast(schema)
                .sort_by([("cell", "ascending"), ("seen", "ascending")])
            )
        base = self.db.arrow(SQL_FILE, "catalog_cells")
        totals = {
            c: [d, t] for c, d, t in zip(*(base[k].to_pylist() for k in ("cell", "num_docs", "tokens")))
        }
        consumed: list[tuple[int, int, int, int]] = []
        if with_seen:
            seen = self._pass("pass_counts", with_seen=True, only_seen=True)
            for c, s, d, t in zip(*(seen[k].to_pylist() for k in ("cell", "seen", "num_docs", "tokens"))):
                if s > 0:
                    totals[c][0] -= d
                    totals[c][1] -= t
                    consumed.append((c, s, d, t))
        rows = [(c, 0, d, t) for c, (d, t) in totals.items() if d > 0] + consumed
        return pa.Table.from_pylist([dict(zip(schema.names, r)) for r in sorted(rows)], schema=schema)

    def _same_cells(self) -> bool:
        """Whether the run's packed cells are the catalog's (`doc_cells`): the same agents with labels, each
        with the same label count and stride (the run's agents in the catalog's order)."""
        stored = {a: (n, int(stride)) for a, n, stride in self.db.run(SQL_FILE, "catalog_agents")}
        return stored == {a: (n, stride) for a, n, stride in self.agent_labels}

    def _pass(self, name: str, **kwargs: Any) -> pa.Table:
        """`_pass_tables`, concatenated."""
        return pa.concat_tables(list(self._pass_tables(name, **kwargs)))

    def _pass_tables(
        self,
        name: str,
        *,
        with_seen: bool = True,
        only_seen: bool = False,
        with_tie: bool = False,
        fill: Mapping[str, str] | None = None,
        **params: Any,
    ) -> Iterator[pa.Table]:
        """One streaming pass over the selectable documents (`pass_docs`: each document's packed labels,
        tokens and seen count), range by range of doc ids (see pass_chunks), through the query `name` of
        sql/console.sql (`{pass}` in it: the pass; `fill`: its other fragments; `params`: bound parameters);
        yields what that query keeps of each range, range by range. Only one range's rows and what the
        query keeps are ever in memory. The pass scans the catalog's `doc_cells` (its cells re-packed for the run's agents through
        `console_cellmap` when they differ); over a read-only catalog whose cells are stale, it joins every
        agent's scores instead (`pass_docs_scores`)."""
        current = self.catalog.ensure_cells()
        terms, joins = [], []
        for i, (agent, num_labels, stride) in enumerate(self.agent_labels):
            args = {"i": i, "agent_lit": quote_literal(agent), "max_label": num_labels - 1, "stride": stride}
            terms.append(fragment(SQL_FILE, "pass_cell_term").format(**args))
            if not current:
                joins.append(fragment(SQL_FILE, "pass_join").format(**args))
        tie = "NULL"
        if with_tie and self.config.tie_break != "hash":
            names = [agent for agent, _, _ in self.agent_labels]
            i = names.index(self.config.tie_break) if self.config.tie_break in names else len(names)
            if current or i == len(names):
                joins.append(
                    fragment(SQL_FILE, "pass_join").format(
                        i=i, agent_lit=quote_literal(self.config.tie_break)
                    )
                )
            tie = f"s{i}.score"
        seen = "pass_only_seen" if only_seen else "pass_seen" if with_seen else None
        seen_args = {
            "seen": "CAST(0 AS INTEGER)" if seen is None else fragment(SQL_FILE, seen),
            "seen_join": "" if seen is None else fragment(SQL_FILE, f"{seen}_join"),
        }
        cell_map = None
        if not current:
            docs = fragment(SQL_FILE, "pass_docs_scores").format(
                cell="\n".join(terms), joins="\n".join(joins), tie=tie, **seen_args
            )
        elif self._same_cells():
            docs = fragment(SQL_FILE, "pass_docs").format(
                cell="CAST(d.full_cell AS BIGINT)",
                cell_join="",
                joins="\n".join(joins),
                tie=tie,
                **seen_args,
            )
        else:
            cell_map = self.db.arrow(SQL_FILE, "cell_map")
            docs = fragment(SQL_FILE, "pass_docs").format(
                cell="k.cell",
                cell_join=fragment(SQL_FILE, "pass_cell_join"),
                joins="\n".join(joins),
                tie=tie,
                **seen_args,
            )
        query = fragment(SQL_FILE, name).format(**{"pass": docs, **(fill or {})})
        params.update(bytes_per_token=self.config.bytes_per_token, run_id=self.run_id)
        if only_seen:
            ranges = [(-(2**63), 2**63 - 1)]
        else:
            chunks, chunk_rows = (
                ("cell_chunks", _CELL_CHUNK_ROWS) if current else ("pass_chunks", _CHUNK_ROWS)
            )
            ranges = self.db.run(SQL_FILE, chunks, chunk_rows=chunk_rows) or [(0, 0)]
        with contextlib.ExitStack() as stack:
            if cell_map is not None:
                stack.enter_context(self.db.registered("console_cellmap", cell_map))
            for lo, hi in ranges:
                yield self.db.execute_arrow(query, {**params, "lo": lo, "hi": hi})
