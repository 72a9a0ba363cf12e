"""Console Version 2 (docs/algorithm.md#version-2): its update rules on hand-computed numbers, the stratified
probe draw, the joint fit, `sample`'s cell shares, and a noise control floored under a synthetic reward oracle
(no training anywhere)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from corpus_agents.config import ConsoleConfig
from corpus_agents.scoring.catalog import Catalog
from corpus_agents.training.console import (
    Console,
    advantage_over_random,
    floor_and_renormalise,
    hedge_theta,
    joint_effects,
    marginal_effects,
    sample_quotas,
    update_memory,
)
from corpus_agents.training.runs import agent_signal, ensure_schema, list_runs
from corpus_agents.training.selection import read_snapshot

N_DOCS = 2400
#: The real agent's true label effects (standardised-reward units); the noise agent's labels carry none.
TRUE_EFFECT = np.array([-0.6, -0.2, 0.2, 0.6])
rng = np.random.default_rng(2024)
REAL = np.arange(N_DOCS) % 4  # label sizes 600 each
NOISE = rng.integers(0, 5, N_DOCS)  # the control: seeded random labels, 5 of them
SMALL = np.where(np.arange(N_DOCS) % 60 == 0, 0, 1)  # a label of 40 documents and one of 2,360
TEXT_BYTES = 40 + (np.arange(N_DOCS) * 37) % 400
LABELS = {"real": REAL, "noise": NOISE, "small": SMALL}
NAMES = {"real": ["r0", "r1", "r2", "r3"], "noise": [f"n{j}" for j in range(5)], "small": ["rare", "common"]}


def doc_tokens(i: int) -> int:
    """Document i's tokens as the catalog counts them (bytes_per_token 4)."""
    return max(1, math.ceil(int(TEXT_BYTES[i]) / 4))


def doc_id(i: int) -> int:
    return (i // 1200) << 32 | (i % 1200)


def index_of(d: int) -> int:
    return (d >> 32) * 1200 + (d & 0xFFFFFFFF)


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    """Two shards of 1,200 documents labelled by a real agent, a noise control and an agent with a rare label."""
    cat = Catalog(tmp_path / "ws", create=True)
    for shard in range(2):
        cat.execute(
            "INSERT INTO shards VALUES (?, ?, 1200, 1, 'fp', 1, [1200], 'text', current_timestamp, NULL)",
            [shard, f"file:///corpus/shard-{shard}.parquet"],
        )
    ids = [doc_id(i) for i in range(N_DOCS)]
    docs = pa.table(
        {
            "doc_id": ids,
            "shard_id": pa.array([i // 1200 for i in range(N_DOCS)], pa.int32()),
            "row_idx": pa.array([i % 1200 for i in range(N_DOCS)], pa.int32()),
            "row_group": pa.array([0] * N_DOCS, pa.int32()),
            "text_bytes": pa.array(TEXT_BYTES, pa.int32()),
            "text_null": [False] * N_DOCS,
        }
    )
    with cat.registered("new_docs", docs):
        cat.execute("INSERT INTO docs SELECT * FROM new_docs")
    for agent, labels in LABELS.items():
        cat.execute("INSERT INTO agents (name, kind, config) VALUES (?, 'synthetic', '{}')", [agent])
        for j, name in enumerate(NAMES[agent]):
            cat.execute("INSERT INTO agent_labels VALUES (?, ?, ?)", [agent, j, name])
        scores = pa.table({"doc_id": ids, "label": pa.array(labels, pa.int16())})
        with cat.registered("new_scores", scores):
            cat.execute("INSERT INTO scores SELECT ?, doc_id, label, NULL FROM new_scores", [agent])
    yield cat
    cat.close()


def oracle(doc_ids: list[int], round_: int, noise: float = 1.0) -> dict[int, float]:
    """Synthetic rewards: the real agent's label effect plus seeded Gaussian noise (per document and round)."""
    out = {}
    for d in doc_ids:
        g = np.random.default_rng([d & 0xFFFFFFFF, d >> 32, round_])
        out[d] = float(TRUE_EFFECT[REAL[index_of(d)]] + noise * g.normal())
    return out


def make_console(cat: Catalog, run: str = "run", **config: Any) -> Console:
    console = Console(cat, run, ConsoleConfig(**config))
    console.start()
    return console


def run_rounds(console: Console, rounds: int) -> list[dict[str, float]]:
    thetas = [console.state().theta]
    for r in range(1, rounds + 1):
        console.update(r, oracle(console.draw_probes(r)["doc_id"].to_pylist(), r))
        thetas.append(console.state().theta)
    return thetas


# ----- update rules on hand-computed numbers ------------------------------------------------------------
def test_memory_is_precision_weighted_with_forgetting() -> None:
    w, pi = np.array([0.2, -0.4, 0.0]), np.array([4.0, 1.0, 0.0])
    beta, se = np.array([1.0, np.nan, -0.3]), np.array([0.5, np.nan, 0.1])
    new_w, new_pi = update_memory(w, pi, beta, se, forgetting=0.5)
    # label 0: pi' = 0.5 * 4 + 1 / 0.25 = 6, w' = (0.5 * 4 * 0.2 + 1.0 / 0.25) / 6 = 4.4 / 6
    assert new_pi[0] == pytest.approx(6.0) and new_w[0] == pytest.approx(4.4 / 6)
    # label 1 had no effect this round: w kept, precision faded
    assert new_w[1] == -0.4 and new_pi[1] == pytest.approx(0.5)
    # label 2 had no precision (no prior): w' is the effect itself
    assert new_pi[2] == pytest.approx(100.0) and new_w[2] == pytest.approx(-0.3)
    no_forgetting = update_memory(w, pi, beta, se, forgetting=1.0)
    assert no_forgetting[0][0] == pytest.approx((4 * 0.2 + 4 * 1.0) / 8)


def test_hedge_step_on_a_hand_computed_advantage() -> None:
    theta = np.array([0.5, 0.3, 0.2])
    adv, se = np.array([0.1, -0.05, 0.0]), np.array([0.05, 0.05, 0.0])
    new = hedge_theta(theta, adv, se, eta=0.5, s0=0.05, floor=0.02)
    # z = Adv / (se + s0) = [1, -0.5, 0]; theta * exp(0.5 z), renormalised
    raw = np.array([0.5 * math.exp(0.5), 0.3 * math.exp(-0.25), 0.2])
    assert new == pytest.approx(raw / raw.sum())
    # a large negative advantage with no error: exp(-0.5 * 0.5 / 0.05) pushes below the floor, which holds
    floored = hedge_theta(
        np.array([0.5, 0.5]), np.array([0.5, -0.5]), np.zeros(2), eta=0.5, s0=0.05, floor=0.3
    )
    assert floored == pytest.approx([0.7, 0.3])


def test_floor_and_renormalise_keeps_the_ratios_of_the_others() -> None:
    x = floor_and_renormalise(np.array([0.6, 0.39, 0.01, 0.0]), 0.02)
    assert x.sum() == pytest.approx(1.0) and x[2] == x[3] == pytest.approx(0.02)
    assert x[0] / x[1] == pytest.approx(0.6 / 0.39)
    assert floor_and_renormalise(np.array([1.0, 0.0]), 0.9) == pytest.approx(
        [0.5, 0.5]
    )  # floor capped at 1/K


def test_advantage_over_random_by_hand() -> None:
    """Two labels of equal token share; half 0 prefers label 0, half 1 is flat."""
    share = {"a": np.array([0.5, 0.5])}
    tau = 0.25
    h0 = marginal_like(beta=[0.4, -0.2], se=[0.1, 0.2])
    h1 = marginal_like(beta=[0.3, -0.1], se=[0.1, 0.1])
    memories = ({"a": np.array([0.25, 0.0])}, {"a": np.array([0.0, 0.0])})
    adv, adv_se, rel = advantage_over_random((h0, h1), memories, share, tau)
    p0 = math.exp(1.0) / (math.exp(1.0) + 1.0)  # softmax of [0.25, 0] / 0.25
    # half 0's preference scored on half 1's effects; half 1 is flat, so p = pi and it adds nothing
    diff = np.array([p0 - 0.5, 0.5 - p0])
    assert adv["a"] == pytest.approx(diff @ [0.3, -0.1] / 2)
    assert adv_se["a"] == pytest.approx(math.sqrt(diff**2 @ [0.01, 0.01]) / 2)
    assert rel["a"] is None  # two labels: no correlation to speak of


def marginal_like(beta: list[float], se: list[float]) -> Any:
    from corpus_agents.training.console import Effects

    b, s = np.array(beta), np.array(se)
    return Effects({"a": b}, {"a": s}, {"a": np.ones(len(b), int)}, {"a": np.diag(s**2)})


# ----- the joint fit ------------------------------------------------------------------------------------
def test_joint_fit_recovers_correlated_label_effects_where_marginal_means_do_not() -> None:
    """Agent B's labels overlap agent A's (85% agree) but carry no effect of their own: the marginal mean of
    B's labels inherits A's effect, the joint fit gives it to A alone."""
    g = np.random.default_rng(7)
    n = 4000
    a = g.integers(0, 2, n)
    b = np.where(g.random(n) < 0.85, a, 1 - a)
    r = np.array([0.0, 1.0])[a] + g.normal(0, 1, n)
    labels, k = {"A": a, "B": b}, {"A": 2, "B": 2}
    joint = joint_effects(labels, k, r, np.ones(n), ridge_lambda=1.0)
    marginal = marginal_effects(labels, k, r, {"A": np.ones(n, bool), "B": np.ones(n, bool)})

    def contrast(fit: Any, agent: str) -> tuple[float, float]:
        d = np.array([-1.0, 1.0])
        return float(d @ fit.beta[agent]), float(math.sqrt(d @ fit.cov[agent] @ d))

    (a_joint, a_se), (b_joint, b_se) = contrast(joint, "A"), contrast(joint, "B")
    assert abs(a_joint - 1.0) < 3 * a_se and abs(b_joint) < 3 * b_se  # the truth, within sampling error
    b_marginal, b_marginal_se = contrast(marginal, "B")
    assert b_marginal > 0.5 and b_marginal > 10 * b_marginal_se  # the marginal mean credits B wrongly
    assert joint.count["A"].sum() == n and (joint.se["A"] > 0).all()


# ----- stratified probes --------------------------------------------------------------------------------
def test_each_stratum_draws_m_documents_of_its_label(catalog: Catalog) -> None:
    console = make_console(catalog, probes_per_label=8)
    strata = console.draw_strata(1).to_pylist()
    by_stratum: dict[tuple[str, int], list[int]] = {}
    for row in strata:
        by_stratum.setdefault((row["agent"], row["label_id"]), []).append(row["doc_id"])
    assert set(by_stratum) == {(a, j) for a, names in NAMES.items() for j in range(len(names))}
    for (agent, j), ids in by_stratum.items():
        assert len(ids) == 8 and all(LABELS[agent][index_of(d)] == j for d in ids)
    probes = console.draw_probes(1)["doc_id"].to_pylist()
    assert probes == sorted(
        {r["doc_id"] for r in strata}
    )  # one probe per document, however many strata drew it
    assert console.draw_probes(1)["doc_id"].to_pylist() == probes  # deterministic
    assert console.draw_probes(2)["doc_id"].to_pylist() != probes
    # a document two strata drew is one probe with both records
    console.update(1, oracle(probes, 1))
    recorded = catalog.execute(
        "SELECT doc_id, count(*) FROM probe_strata WHERE round = 1 GROUP BY doc_id HAVING count(*) > 1"
    )
    counts = {}
    for row in strata:
        counts[row["doc_id"]] = counts.get(row["doc_id"], 0) + 1
    assert dict(recorded) == {d: c for d, c in counts.items() if c > 1} and recorded
    assert catalog.execute("SELECT count(*) FROM probes WHERE round = 1")[0][0] == len(probes)


def test_update_takes_the_draw_that_draw_probes_recorded(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round's probes are drawn in one pass: draw_strata and update take the draw draw_probes recorded
    (probe_draws); once the documents or scores change (another cells_key) the round is drawn again."""
    calls: list[int] = []
    draw_pass = Console._draw_pass
    monkeypatch.setattr(Console, "_draw_pass", lambda self, r: calls.append(r) or draw_pass(self, r))
    console = make_console(catalog)
    probes = console.draw_probes(1)
    strata = console.draw_strata(1)
    console.update(1, oracle(probes["doc_id"].to_pylist(), 1))
    assert calls == [1]
    recorded = catalog.execute("SELECT agent, label_id, doc_id FROM probe_strata ORDER BY ALL")
    assert recorded == [tuple(r.values()) for r in strata.to_pylist()]
    assert Console(catalog, "run").draw_probes(1).equals(probes)  # a fresh console takes the record too
    assert calls == [1]
    catalog.execute("INSERT INTO scores VALUES ('unknown', -1, NULL, NULL)")  # another cells_key
    assert console.draw_probes(1).equals(probes)  # the same labels: the same draw, drawn again
    assert calls == [1, 1]


@pytest.mark.slow  # in .ci/run's slow line; keeps the default run under 5 minutes
def test_stratified_draw_is_uniform_within_each_label(catalog: Catalog) -> None:
    """Over 300 rounds, every document of the 40-document label is drawn about 300 * 8 / 40 = 60 times: the
    counts pass a chi-square test of uniformity; the label's draw ignores the other agents' labels."""
    console = make_console(catalog, probes_per_label=8, agents=["small", "real"])
    rare = [doc_id(i) for i in range(N_DOCS) if SMALL[i] == 0]
    counts = dict.fromkeys(rare, 0)
    real_of_rare = np.zeros(4)
    rounds = 300
    for r in range(1, rounds + 1):
        for row in console.draw_strata(r).to_pylist():
            if row["agent"] == "small" and row["label_id"] == 0:
                counts[row["doc_id"]] += 1
                real_of_rare[REAL[index_of(row["doc_id"])]] += 1
    observed = np.array(list(counts.values()), dtype=float)
    expected = rounds * 8 / len(rare)
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    dof = len(rare) - 1
    assert observed.sum() == rounds * 8
    assert chi2 < dof + 4 * math.sqrt(2 * dof), chi2  # about the 99.9th percentile of chi2(39)
    assert observed.min() > 0


# ----- sample selection ---------------------------------------------------------------------------------
def test_sample_quotas_follow_q_with_cap_and_water_filling() -> None:
    n = np.array([100.0, 1000.0, 1000.0, 10.0, 2000.0])
    s = np.array([0.0, 2.0, 0.0, 3.0, -1.0])  # log-weights (reward units)
    tau, eps, budget = 0.5, 0.1, 1000.0
    quota, q = sample_quotas(n, s, budget, tau=tau, eps=eps, max_cell_share=0.5)
    soft = n * np.exp(s / tau)
    expected_q = (1 - eps) * soft / soft.sum() + eps * n / n.sum()
    assert q == pytest.approx(expected_q)
    assert q[1] * budget > 500 and q[3] * budget > 10  # cell 1 over the cap, cell 3 over its own size
    # cell 1 capped at half the budget, cell 3 taken whole; the rest shared in proportion to q
    rest = budget - 500 - 10
    others = [0, 2, 4]
    assert quota[1] == pytest.approx(500) and quota[3] == pytest.approx(10)
    assert quota[others] == pytest.approx(rest * q[others] / q[others].sum())
    assert quota.sum() == pytest.approx(budget)
    # the cap is lifted only when nothing else is left; the whole corpus when the budget covers it
    squeezed, _ = sample_quotas(np.array([900.0, 100.0]), np.zeros(2), 800, tau=1, eps=0, max_cell_share=0.5)
    assert squeezed == pytest.approx([700, 100])
    everything, _ = sample_quotas(n, s, 10 * n.sum(), tau=tau, eps=eps, max_cell_share=0.5)
    assert everything == pytest.approx(n)


def expected_cell_quotas(console: Console, round_: int, budget: int) -> dict[tuple[int, ...], float]:
    """q(c) * budget per label cell, computed here from the recorded state and the documents' labels."""
    state = console.state(round_)
    agents = console.config.agents
    tokens: dict[tuple[int, ...], float] = {}
    for i in range(N_DOCS):
        key = tuple(int(LABELS[a][i]) for a in agents)
        tokens[key] = tokens.get(key, 0) + doc_tokens(i)
    score = {
        key: sum(state.theta[a] * state.w[a][NAMES[a][j]] for a, j in zip(agents, key)) for key in tokens
    }
    total = sum(tokens.values())
    tau, eps = console.config.tau, console.config.eps
    z = sum(tokens[c] * math.exp(score[c] / tau) for c in tokens)
    return {
        c: budget * ((1 - eps) * tokens[c] * math.exp(score[c] / tau) / z + eps * tokens[c] / total)
        for c in tokens
    }


def test_sample_selection_under_one_document_still_selects_one(catalog: Catalog, tmp_path: Path) -> None:
    """A budget of one token is under every document: the selection is not empty but the first document in
    key order, the same one each time."""
    console = make_console(catalog, agents=["real", "noise"], tau=1.0)
    run_rounds(console, 1)
    first = read_snapshot(console.select(1, 1, tmp_path / "a.parquet"))[0]
    again = read_snapshot(console.select(1, 1, tmp_path / "b.parquet"))[0]
    assert first.num_rows == 1 and first["doc_id"].to_pylist() == again["doc_id"].to_pylist()


def test_sample_selection_realises_q_per_cell(catalog: Catalog, tmp_path: Path) -> None:
    console = make_console(catalog, agents=["real", "noise"], tau=1.0)
    run_rounds(console, 2)
    budget = 60_000
    quotas = expected_cell_quotas(console, 2, budget)
    assert max(quotas.values()) < 0.5 * budget  # neither the cap nor the cells' sizes bind here
    path = console.select(2, budget, tmp_path / "sel.parquet")
    rows, _ = read_snapshot(path)
    realised: dict[tuple[int, ...], float] = dict.fromkeys(quotas, 0.0)
    cell_tokens: dict[tuple[int, ...], float] = dict.fromkeys(quotas, 0.0)
    squares: dict[tuple[int, ...], float] = dict.fromkeys(quotas, 0.0)  # sum of squared document tokens
    for d in rows["doc_id"].to_pylist():
        i = index_of(d)
        realised[(int(REAL[i]), int(NOISE[i]))] += doc_tokens(i)
    for i in range(N_DOCS):
        key = (int(REAL[i]), int(NOISE[i]))
        cell_tokens[key] += doc_tokens(i)
        squares[key] += doc_tokens(i) ** 2
    # each document is taken with probability p = quota / cell tokens, so a cell's tokens are its quota
    # within sampling error: sd = sqrt(p (1 - p) * sum of squared document tokens); over the 20 cells the
    # squared z-scores sum to a chi-square of 20 degrees of freedom (99.9th percentile: 45.3)
    z = []
    for c, quota in quotas.items():
        p = quota / cell_tokens[c]
        z.append((realised[c] - quota) / math.sqrt(p * (1 - p) * squares[c]))
    assert max(abs(v) for v in z) < 4.5 and sum(v * v for v in z) < 45.3, z
    total, longest = sum(realised.values()), max(doc_tokens(i) for i in range(N_DOCS))
    assert budget - longest < total <= budget  # the budget, up to a document
    shares = np.array([v / total for v in realised.values()])
    entropy, top, cells = catalog.execute(
        "SELECT cell_entropy, top_cell_share, num_cells FROM selections WHERE run_id = 'run' AND round = 2"
    )[0]
    nonzero = shares[shares > 0]
    assert entropy == pytest.approx(float(-(nonzero * np.log(nonzero)).sum()))
    assert top == pytest.approx(nonzero.max()) and cells == len(nonzero)
    # the selection is seeded: the same state, round and budget select the same documents
    again = console.select(2, budget, tmp_path / "again.parquet")
    assert read_snapshot(again)[0]["doc_id"].to_pylist() == rows["doc_id"].to_pylist()


def test_sample_selection_takes_short_and_long_documents_at_equal_rates(
    catalog: Catalog, tmp_path: Path
) -> None:
    """Per token, a cell's long documents are taken as often as its short ones, even when quotas are about one
    document (40 cells, a budget of 3,000 tokens: ~75 tokens a cell, documents of 10-110). Cutting each cell's
    hash order at its quota would take a 100-token document about a third as often per token as a 15-token
    one. Over 150 rounds, each document's inclusions over its expected ones (p(c) = quota / cell tokens) are
    summed per token for short (<= 30 tokens) and long (>= 80 tokens) documents."""
    console = make_console(catalog, agents=["real", "noise", "small"], tau=1.0)
    run_rounds(console, 2)
    budget, rounds = 3_000, 150
    quotas = expected_cell_quotas(console, 2, budget)
    cell_of = [tuple(int(LABELS[a][i]) for a in console.config.agents) for i in range(N_DOCS)]
    cell_tokens: dict[tuple[int, ...], float] = {}
    for i in range(N_DOCS):
        cell_tokens[cell_of[i]] = cell_tokens.get(cell_of[i], 0) + doc_tokens(i)
    taken = np.zeros(N_DOCS)
    for r in range(2, 2 + rounds):
        selected = read_snapshot(console.select(r, budget, tmp_path / f"sel-{r}.parquet"))[0]
        for d in selected["doc_id"].to_pylist():
            taken[index_of(d)] += 1
    length = np.array([doc_tokens(i) for i in range(N_DOCS)], dtype=np.float64)
    p = np.array([quotas[cell_of[i]] / cell_tokens[cell_of[i]] for i in range(N_DOCS)])
    rate = {}
    for name, docs in (("short", length <= 30), ("long", length >= 80)):
        rate[name] = (taken[docs] * length[docs]).sum() / (rounds * p[docs] * length[docs]).sum()
    # the prefix's cut leaves out one document a round, more often a long one: ~3% of long tokens here
    assert 0.87 < rate["long"] / rate["short"] < 1.15, rate
    assert 0.9 < rate["short"] < 1.1 and 0.9 < rate["long"] < 1.1, rate


def test_sample_selection_caps_the_favourite_cell(catalog: Catalog, tmp_path: Path) -> None:
    """With a strong preference (tau small) one cell's q passes max_cell_share: it gets half the budget and
    the other cells the rest; the eps floor keeps every cell in the selection."""
    console = make_console(catalog, agents=["real"], tau=0.05, eps=0.2)
    run_rounds(console, 2)
    budget = 40_000
    rows, _ = read_snapshot(console.select(2, budget, tmp_path / "sel.parquet"))
    tokens = np.zeros(4)
    for d in rows["doc_id"].to_pylist():
        i = index_of(d)
        tokens[REAL[i]] += doc_tokens(i)
    assert np.argmax(tokens) == 3
    assert abs(tokens[3] / budget - 0.5) < 0.02  # capped at half the budget
    assert (tokens[:3] > 0).all() and abs(tokens.sum() - budget) < 0.02 * budget


# ----- controls -----------------------------------------------------------------------------------------
def test_noise_control_is_floored_while_the_real_agent_gains(catalog: Catalog) -> None:
    console = make_console(catalog, agents=["real", "noise"])
    thetas = run_rounds(console, 5)
    assert thetas[0] == {"real": 0.5, "noise": 0.5}
    assert thetas[-1]["noise"] < 0.05 and thetas[-1]["real"] > 0.95  # at the floor region within 5 rounds
    assert all(b["real"] >= a["real"] for a, b in zip(thetas[:3], thetas[1:4]))
    # the control's memory stays within about 2 se of 0 (se = 1 / sqrt(precision)); the real agent's is not
    memory = catalog.execute(
        "SELECT agent, label_id, w, precision FROM agent_memory WHERE run_id = 'run' AND round = 5"
    )
    noise_z = [w * math.sqrt(p) for a, _, w, p in memory if a == "noise"]
    real_z = {j: w * math.sqrt(p) for a, j, w, p in memory if a == "real"}
    assert max(abs(z) for z in noise_z) < 2.5, noise_z
    assert real_z[3] > 3 and real_z[0] < -3
    rows = dict(
        (a, (rel, reward, se))
        for a, rel, reward, se in catalog.execute(
            "SELECT agent, reliability, reward, reward_se FROM collab_weights WHERE round = 5"
        )
    )
    assert rows["real"][0] > 0.5  # split-half reliability of real label effects
    assert rows["noise"][0] is None or rows["noise"][0] < rows["real"][0]
    assert rows["real"][1] > 2 * rows["real"][2]  # a clear advantage over random
    effects = catalog.execute(
        "SELECT reward, se, num_probes FROM agent_memory WHERE run_id = 'run' AND round = 1 AND agent = 'real'"
    )
    assert all(se > 0 and n >= 16 for _, se, n in effects)
    # `corpus-agents runs` shows it: per agent, t of its advantage over the rounds and the mean reliability
    (listed,) = list_runs(catalog).to_pylist()
    signal = {
        a: (float(t), float(rel), int(n))
        for a, t, n, rel in re.findall(r"(\w+) t ([\d.-]+) \((\d+)\) rel ([\d.-]+)", listed["signal"])
    }
    assert set(signal) == {"noise", "real"}, listed["signal"]
    assert signal["real"][0] > 3 and signal["real"][1] > 0.5 and signal["real"][2] == 5  # rounds 1-5
    assert abs(signal["noise"][0]) < 2, listed["signal"]


def test_t_over_rounds_is_a_valid_test_under_no_signal() -> None:
    """Monte Carlo of the console's own rules for an agent of pure noise (5 labels, effects N(0, se^2) in each
    half, memories learnt across 9 rounds with forgetting): the one-sample t of its advantage over the rounds
    exceeds the 5% two-sided critical value (2.306 at 8 degrees of freedom) about 5% of the time, although a
    single round's Adv / se is wider than a unit normal (the halves' estimates share their data)."""
    rng = np.random.default_rng(0)
    k, runs, rounds = 5, 1000, 9
    share = {"a": np.full(k, 1 / k)}
    t_values, z_values = [], []
    for _ in range(runs):
        w, precision, adv = np.zeros(k), np.zeros(k), []
        for _ in range(rounds):
            se = rng.uniform(0.03, 0.12, (2, k))
            beta = rng.normal(0.0, se)
            halves = tuple(marginal_like(list(beta[h]), list(se[h])) for h in (0, 1))
            memories = tuple({"a": update_memory(w, precision, beta[h], se[h], 0.5)[0]} for h in (0, 1))
            a, a_se, _ = advantage_over_random(halves, memories, share, tau=0.25)
            adv.append(a["a"])
            z_values.append(a["a"] / a_se["a"])
            whole_precision = (1 / se**2).sum(0)
            whole = (beta / se**2).sum(0) / whole_precision
            w, precision = update_memory(w, precision, whole, 1 / np.sqrt(whole_precision), 0.5)
        x = np.array(adv)
        t_values.append(x.mean() / (x.std(ddof=1) / math.sqrt(rounds)))
    rate = float(np.mean(np.abs(t_values) > 2.306))
    assert 0.02 < rate < 0.075, rate  # 5% up to Monte Carlo error (sd ~0.7% at 1,000 runs)
    assert np.std(z_values) > 1.1  # why runs and report use t over rounds, not a round's Adv / se


def test_agent_signal_t_over_rounds(catalog: Catalog) -> None:
    """t is the rounds' mean advantage over its standard error across them (one-sample t), rounds with no
    measured advantage (the warm-up) left out; none below 3 rounds or with no spread; the paper's preset
    measures none."""
    ensure_schema(catalog)
    runs = ["hand", "paper", "few", "flat"]
    catalog.execute("INSERT INTO runs (run_id, config) VALUES " + ", ".join(f"('{r}', '{{}}')" for r in runs))
    rows = {
        "hand": [(0, 0.0, None, None), (1, 0.3, 0.1, 0.9), (2, 0.1, 0.1, None), (3, 0.2, 0.2, 0.5)],
        "paper": [(0, 0.0, None, None), (1, 0.3, None, None), (2, 0.1, None, None), (3, 0.2, None, None)],
        "few": [(1, 0.3, 0.1, None), (2, 0.1, 0.1, None)],
        "flat": [(1, 0.2, 0.1, 0.4), (2, 0.2, 0.1, 0.4), (3, 0.2, 0.1, 0.4)],
    }
    for run, measured in rows.items():
        for round_, adv, se, rel in measured:
            catalog.execute(
                "INSERT INTO collab_weights (run_id, round, agent, theta, reward, reward_se, reliability) "
                "VALUES (?, ?, 'a', 0.5, ?, ?, ?)",
                [run, round_, adv, se, rel],
            )
    got = {row[0]: row for row in agent_signal(catalog)}
    assert set(got) == {"hand", "few", "flat"}
    advs = np.array([0.3, 0.1, 0.2])
    assert got["hand"][1:4] == ("a", 3, pytest.approx(0.2))
    assert got["hand"][4] == pytest.approx(advs.mean() / (advs.std(ddof=1) / math.sqrt(3)))
    assert got["hand"][5] == pytest.approx(0.7)
    assert got["few"][4] is None and got["few"][5] is None and got["flat"][4] is None
    listed = {r["run_id"]: r["signal"] for r in list_runs(catalog).to_pylist()}
    assert listed == {
        "hand": "a t 3.5 (3) rel 0.70", "paper": None, "few": "a t - (2) rel -", "flat": "a t - (3) rel 0.40"
    }  # fmt: skip


def test_fixed_theta_keeps_the_controls_share(catalog: Catalog) -> None:
    console = make_console(catalog, "fixed", agents=["real", "noise"], eta_theta=0.0)
    thetas = run_rounds(console, 3)
    assert thetas[-1] == {"real": 0.5, "noise": 0.5}
    assert console.state().w["real"]["r3"] > 0.3  # the memories still learn
    frozen = make_console(catalog, "frozen", agents=["real", "noise"], fixed_weights=True)
    run_rounds(frozen, 2)
    assert frozen.state().w == {a: dict.fromkeys(NAMES[a], 0.0) for a in ("real", "noise")}


def test_v2_update_is_idempotent_and_resumable(catalog: Catalog) -> None:
    console = make_console(catalog, agents=["real", "noise"])
    probes = console.draw_probes(1)["doc_id"].to_pylist()
    console.update(1, oracle(probes, 1))
    first = console.state()
    console.update(1, oracle(probes, 1))
    assert console.state() == first
    recorded = catalog.execute("SELECT count(*) FROM probe_strata WHERE round = 1")[0][0]
    assert recorded == console.draw_strata(1).num_rows == 9 * 16
    assert Console(catalog, "run").config.preset == "v2"  # the stored config, preset included


def test_topk_and_gumbel_remain_as_modes_over_v2_priorities(catalog: Catalog, tmp_path: Path) -> None:
    console = make_console(catalog, agents=["real", "noise"])
    run_rounds(console, 2)
    budget = 20_000
    top = read_snapshot(console.select(2, budget, tmp_path / "t.parquet", mode="topk"))[0]
    assert all(REAL[index_of(d)] == 3 for d in top["doc_id"].to_pylist())  # the best label's cells first
    gumbel = read_snapshot(console.select(2, budget, tmp_path / "g.parquet", mode="gumbel"))[0]
    labels = np.array([REAL[index_of(d)] for d in gumbel["doc_id"].to_pylist()])
    assert (labels == 3).mean() > 0.5 and len(set(labels)) > 1  # favours it, still samples
    assert catalog.execute("SELECT mode FROM selections WHERE run_id = 'run' AND round = 2")[0][0] == "gumbel"
