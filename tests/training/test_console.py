"""The paper's console (`console.preset: paper`, docs/algorithm.md#version-1-the-papers-console) on a small
catalog of synthetic labels: learning, fusion, selection. Version 2 is tests/training/test_console_v2.py."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import corpus_agents.training.console as console_module
from corpus_agents.config import ConfigError
from corpus_agents.scoring.catalog import Catalog
from corpus_agents.training.console import (
    Console,
    ConsoleConfig,
    ConsoleError,
    learn_round,
    project_to_simplex,
)
from corpus_agents.training.selection import read_snapshot

ROWS_PER_SHARD = 600
AGENTS = {"quality": ["low", "mid", "high"], "domain": ["web", "code"], "noise": ["a", "b", "c", "d"]}


def labels_of(i: int) -> dict[str, int | None]:
    """Deterministic synthetic labels of document i: `noise` is unrelated to `quality`; some are unlabelled."""
    return {
        "quality": None if i % 53 == 7 else i % 3,
        "domain": (i // 3) % 2,
        "noise": None if i % 41 == 5 else (i * 7919 // 5) % 4,
    }


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    """Two shards of 600 documents; texts of 40 to ~440 bytes, a few null or empty; three labelled agents."""
    cat = Catalog(tmp_path / "ws", create=True)
    n = 2 * ROWS_PER_SHARD
    for shard in range(2):
        cat.execute(
            "INSERT INTO shards VALUES (?, ?, ?, 1, 'fp', 3, [256, 256, 88], 'text', current_timestamp, NULL)",
            [shard, f"file:///corpus/shard-{shard}.parquet", ROWS_PER_SHARD],
        )
    docs = pa.table(
        {
            "doc_id": [(i // ROWS_PER_SHARD) << 32 | (i % ROWS_PER_SHARD) for i in range(n)],
            "shard_id": pa.array([i // ROWS_PER_SHARD for i in range(n)], pa.int32()),
            "row_idx": pa.array([i % ROWS_PER_SHARD for i in range(n)], pa.int32()),
            "row_group": pa.array([(i % ROWS_PER_SHARD) // 256 for i in range(n)], pa.int32()),
            "text_bytes": pa.array(
                [0 if i % 97 == 13 else 40 + (i * 37) % 400 for i in range(n)], pa.int32()
            ),
            "text_null": [i % 89 == 11 for i in range(n)],
        }
    )
    with cat.registered("new_docs", docs):
        cat.execute("INSERT INTO docs SELECT * FROM new_docs")
    for agent, names in AGENTS.items():
        cat.execute("INSERT INTO agents (name, kind, config) VALUES (?, 'synthetic', '{}')", [agent])
        for j, x in enumerate(names):
            cat.execute("INSERT INTO agent_labels VALUES (?, ?, ?)", [agent, j, x])
        scores = pa.table(
            {
                "doc_id": docs["doc_id"],
                "label": pa.array([labels_of(i)[agent] for i in range(n)], pa.int16()),
                "score": pa.array([((i * 2654435761) % 1000) / 1000 for i in range(n)], pa.float32()),
            }
        )
        with cat.registered("new_scores", scores):
            cat.execute("INSERT INTO scores SELECT ?, doc_id, label, score FROM new_scores", [agent])
    yield cat
    cat.close()


def doc_index(doc_id: int) -> int:
    return (doc_id >> 32) * ROWS_PER_SHARD + (doc_id & 0xFFFFFFFF)


def quality_rewards(doc_ids: Iterable[int], good: float = 1.0, bad: float = -1.0) -> dict[int, float]:
    """Rewards that follow the quality label: `high` documents help, the others hurt; unlabelled: 0."""
    out = {}
    for d in doc_ids:
        label = labels_of(doc_index(d))["quality"]
        out[d] = 0.0 if label is None else (good if label == 2 else bad)
    return out


def paper(**config: Any) -> ConsoleConfig:
    """A config of the paper's console (every test here pins it)."""
    return ConsoleConfig(**{"preset": "paper", **config})


def make_console(cat: Catalog, run: str = "run", **config: Any) -> Console:
    console = Console(cat, run, paper(**config))
    console.start()
    return console


def learn(console: Console, rounds: int, **reward_kw: float) -> None:
    for r in range(1, rounds + 1):
        console.update(r, quality_rewards(console.draw_probes(r)["doc_id"].to_pylist(), **reward_kw))


def selectable(cat: Catalog) -> pa.Table:
    return cat.query(
        "SELECT doc_id, greatest(1, CAST(ceil(text_bytes / 4.0) AS INTEGER)) AS tokens FROM docs "
        "WHERE NOT text_null AND text_bytes > 0 ORDER BY doc_id"
    )


def priorities(console: Console, at_round: int, seen: dict[int, int] | None = None) -> dict[int, float]:
    """S(x) of every selectable document, computed here document by document from the recorded state
    (an agent's unlabelled documents count w_hat = 0.5)."""
    state = console.state(at_round)
    w_hat = {}
    for agent, w in state.w.items():
        lo, hi = min(w.values()), max(w.values())
        w_hat[agent] = [0.5 if hi - lo <= 1e-12 else (v - lo) / (hi - lo) for v in w.values()]
    out = {}
    for doc_id in selectable(console.catalog)["doc_id"].to_pylist():
        labels = labels_of(doc_index(doc_id))
        fused = sum(
            theta * (0.5 if labels[a] is None else w_hat[a][labels[a]]) for a, theta in state.theta.items()
        )
        out[doc_id] = fused / (1 + console.config.decay_lambda * (seen or {}).get(doc_id, 0))
    return out


def selected_ids(path: Path) -> list[int]:
    rows, _ = read_snapshot(path)
    return rows["doc_id"].to_pylist()


def order_hash(cat: Catalog, seed: int, at_round: int) -> dict[int, int]:
    rows = cat.execute(
        "SELECT doc_id, hash(doc_id, CAST(? AS BIGINT), CAST(? AS BIGINT)) FROM docs", [seed, at_round]
    )
    return dict(rows)


# ----- run state ----------------------------------------------------------------------------------------
def test_start_creates_round_zero_and_resumes(catalog: Catalog) -> None:
    console = make_console(catalog)
    state = console.state()
    assert state.round == 0
    assert state.w == {a: {x: 0.0 for x in names} for a, names in AGENTS.items()}
    assert state.theta == pytest.approx({a: 1 / 3 for a in AGENTS})
    console.start()  # resume: nothing changes, nothing duplicated
    assert catalog.execute("SELECT count(*) FROM agent_memory")[0][0] == 9
    assert Console(catalog, "run").config == console.config  # the stored config is the default
    with pytest.raises(ConsoleError, match="eta_agent"):
        Console(catalog, "run", paper(eta_agent=0.5))


def test_prior_sets_initial_memory(catalog: Catalog) -> None:
    console = make_console(catalog, prior={"domain": {"code": 0.8}})
    assert console.state().w["domain"] == {"web": 0.0, "code": 0.8}
    with pytest.raises(ConsoleError, match="unknown labels"):
        Console(catalog, "other", paper(prior={"domain": {"cobol": 1.0}}))


def test_config_errors_are_clear(catalog: Catalog) -> None:
    with pytest.raises(ConsoleError, match="no agent named 'nope'"):
        Console(catalog, "r", paper(agents=["quality", "nope"]))
    with pytest.raises(
        ConfigError, match="console.mode must be one of sample, topk, gumbel, random, got 'best'"
    ):
        Console(catalog, "r", paper(mode="best"))
    with pytest.raises(ConfigError, match="console.mode: sample needs console.preset: v2"):
        Console(catalog, "r", paper(mode="sample"))
    with pytest.raises(ConsoleError, match="call start"):
        Console(catalog, "never-started").update(1, {})


# ----- learning -----------------------------------------------------------------------------------------
def test_one_memory_step_per_round_not_per_probe(catalog: Catalog) -> None:
    console = make_console(catalog)
    learn(console, 1)
    w = console.state().w["quality"]
    # One step with eta = 0.3 from 0 toward the mean reward (+1 for high, -1 otherwise), whatever the number of
    # probes; the released code's per-probe steps would have given 1 - 0.7**64.
    assert w == pytest.approx({"low": -0.3, "mid": -0.3, "high": 0.3})
    console.update(2, quality_rewards(console.draw_probes(2)["doc_id"].to_pylist()))
    assert console.state().w["quality"]["high"] == pytest.approx(0.3 + 0.3 * (1 - 0.3))


def test_positive_reward_raises_memory(catalog: Catalog) -> None:
    """Reward sign: a label whose documents lower the reference loss (positive reward) gains weight."""
    console = make_console(catalog)
    learn(console, 1)
    w = console.state().w["quality"]
    assert w["high"] > 0 > w["low"]


def test_labels_without_probes_keep_their_weight(catalog: Catalog) -> None:
    console = make_console(catalog, prior={"quality": {"low": 0.7, "mid": -0.2}})
    probes = console.draw_probes(1)["doc_id"].to_pylist()
    only_high = {d: r for d, r in quality_rewards(probes).items() if labels_of(doc_index(d))["quality"] == 2}
    console.update(1, only_high)
    w = console.state().w["quality"]
    assert w["low"] == 0.7 and w["mid"] == -0.2
    assert w["high"] == pytest.approx(0.3)
    rows = catalog.execute(
        "SELECT label_id, reward, num_probes FROM agent_memory WHERE agent = 'quality' AND round = 1 ORDER BY 1"
    )
    assert rows[0][1:] == (None, 0) and rows[2][1] == pytest.approx(1.0) and rows[2][2] > 0


def test_theta_moves_toward_the_agent_whose_labels_earned_more(catalog: Catalog) -> None:
    console = make_console(catalog, agents=["quality", "noise"])
    thetas = [console.state().theta["quality"]]
    for r in range(1, 4):
        console.update(r, quality_rewards(console.draw_probes(r)["doc_id"].to_pylist()))
        thetas.append(console.state().theta["quality"])
    assert thetas[0] == 0.5
    assert all(b > a for a, b in zip(thetas, thetas[1:])), thetas  # not stuck at uniform
    rewards = dict(catalog.execute("SELECT agent, reward FROM collab_weights WHERE round = 1"))
    assert rewards["quality"] > rewards["noise"]


def test_theta_stays_on_the_simplex_above_its_floor(catalog: Catalog) -> None:
    console = make_console(catalog, eta_theta=1.0)
    learn(console, 4, good=50.0, bad=-50.0)
    theta = console.state().theta
    assert sum(theta.values()) == pytest.approx(1.0)
    assert min(theta.values()) == pytest.approx(0.02)  # pushed down to the floor, not below
    assert theta["quality"] == max(theta.values())


def test_projection_onto_floored_simplex() -> None:
    rng = np.random.default_rng(0)
    for k in (1, 2, 3, 7):
        for _ in range(50):
            v = rng.normal(0, 2, k)
            x = project_to_simplex(v, 0.02)
            floor = min(0.02, 1 / k)
            assert x.sum() == pytest.approx(1.0) and x.min() >= floor - 1e-12
            # Optimality (KKT): x = max(v - tau, floor) for one tau.
            free = x > floor + 1e-9
            if free.any():
                tau = (v - x)[free][0]
                assert np.allclose(x, np.maximum(v - tau, floor))
    feasible = np.array([0.2, 0.3, 0.5])
    assert project_to_simplex(feasible, 0.02) is not feasible
    assert (project_to_simplex(feasible, 0.02) == feasible).all()  # exactly unchanged


def test_console_reward_uses_softmax_of_updated_memory() -> None:
    w = {"a": np.zeros(2), "b": np.zeros(2)}
    r = {"a": np.array([1.0, -1.0]), "b": np.array([0.0, np.nan])}
    new_w, earned, theta = learn_round(
        w, r, {"a": 0.5, "b": 0.5}, eta_agent=0.3, eta_theta=0.5, tau_p=1.0, theta_floor=0.02
    )
    assert new_w["a"].tolist() == pytest.approx([0.3, -0.3]) and new_w["b"].tolist() == [0.0, 0.0]
    p = np.exp([0.3, -0.3]) / np.exp([0.3, -0.3]).sum()
    assert earned["a"] == pytest.approx(p @ [1.0, -1.0]) and earned["b"] == 0.0  # b: only label 0 probed
    assert theta["a"] == pytest.approx(0.5 + 0.5 * earned["a"] / 2)


def test_update_is_idempotent_per_round(catalog: Catalog) -> None:
    console = make_console(catalog)
    probes = console.draw_probes(1)["doc_id"].to_pylist()
    console.update(1, quality_rewards(probes))
    first = console.state()
    console.update(1, quality_rewards(probes))
    assert console.state() == first
    count = catalog.execute("SELECT count(*) FROM probes WHERE round = 1")[0][0]
    assert count == len(probes)
    console.update(1, quality_rewards(probes, good=-1.0, bad=1.0))  # a recorded round is replaced
    assert console.state().w["quality"]["high"] == pytest.approx(-0.3)


# ----- probes -------------------------------------------------------------------------------------------
def test_probes_cover_every_label_uniformly_and_deterministically(catalog: Catalog) -> None:
    console = make_console(catalog, probes_per_label=8)
    probes = console.draw_probes(1)
    ids = probes["doc_id"].to_pylist()
    assert len(ids) == len(set(ids))
    selectable_ids = set(selectable(catalog)["doc_id"].to_pylist())
    assert set(ids) <= selectable_ids  # never a null or empty text
    for agent, names in AGENTS.items():
        for j in range(len(names)):
            n = sum(labels_of(doc_index(d))[agent] == j for d in ids)
            assert n >= 8, (agent, j)
    assert probes.column_names == ["doc_id", "shard_id", "row_idx", "row_group", "tokens"]
    assert console.draw_probes(1).equals(probes)
    assert console.draw_probes(2)["doc_id"].to_pylist() != ids


# ----- selection ----------------------------------------------------------------------------------------
def expected_topk(cat: Catalog, prio: dict[int, float], budget: int, seed: int, at_round: int) -> list[int]:
    """The spec's topk, document by document: highest S first, ties in hash order, longest prefix in budget."""
    h = order_hash(cat, seed, at_round)
    tokens = dict(zip(*selectable(cat).to_pydict().values()))
    order = sorted(prio, key=lambda d: (-round(prio[d], 12), h[d], d))
    out, used = [], 0
    for d in order:
        if used + tokens[d] > budget:
            break
        out.append(d)
        used += tokens[d]
    return sorted(out)


def test_topk_takes_the_highest_priorities_within_the_budget(catalog: Catalog, tmp_path: Path) -> None:
    console = make_console(catalog)
    learn(console, 2)
    budget = 20_000
    path = console.select(2, budget, tmp_path / "sel.parquet")
    got = selected_ids(path)
    assert got == expected_topk(catalog, priorities(console, 2), budget, seed=0, at_round=2)
    rows, shards = read_snapshot(path)
    assert set(shards) == {0, 1} and shards[0].uri == "file:///corpus/shard-0.parquet"
    prio = priorities(console, 2)
    assert rows["priority"].to_pylist() == pytest.approx([prio[d] for d in got])
    record = catalog.execute("SELECT num_docs, tokens, mode, budget_tokens FROM selections")[0]
    tokens = dict(zip(*selectable(catalog).to_pydict().values()))
    assert record == (len(got), sum(tokens[d] for d in got), "topk", budget)
    assert record[1] <= budget


def test_topk_with_flat_weights_is_a_hash_sample_and_whole_corpus_fits(
    catalog: Catalog, tmp_path: Path
) -> None:
    console = make_console(catalog)
    got = selected_ids(console.select(0, 5_000, tmp_path / "a.parquet"))
    assert got == expected_topk(catalog, priorities(console, 0), 5_000, seed=0, at_round=0)
    everything = selected_ids(console.select(0, 10**9, tmp_path / "b.parquet"))
    assert everything == selectable(catalog)["doc_id"].to_pylist()
    assert selected_ids(console.select(0, 0, tmp_path / "c.parquet")) == []


def test_tie_break_by_an_agents_raw_score(catalog: Catalog, tmp_path: Path) -> None:
    console = make_console(catalog, tie_break="quality")
    got = selected_ids(console.select(0, 3_000, tmp_path / "sel.parquet"))  # round 0: every priority ties
    score = dict(catalog.execute("SELECT doc_id, score FROM scores WHERE agent = 'quality'"))
    chosen = min(score[d] for d in got)
    others = set(selectable(catalog)["doc_id"].to_pylist()) - set(got)
    assert chosen >= max(score[d] for d in others) - 1e-6


def test_decay_lowers_the_priority_of_consumed_documents(catalog: Catalog, tmp_path: Path) -> None:
    console = make_console(catalog)
    first = selected_ids(console.select(0, 4_000, tmp_path / "r1.parquet"))  # flat weights: all S = 0.5
    console.record_consumed(first)
    second = selected_ids(console.select(1, 4_000, tmp_path / "r2.parquet"))
    assert not set(first) & set(second)  # the consumed ones now have S = 0.5 / 1.1: unseen ones come first
    learn(console, 1)
    third = selected_ids(console.select(1, 4_000, tmp_path / "r3.parquet"))
    console.record_consumed(third)
    fourth = selected_ids(console.select(2, 4_000, tmp_path / "r4.parquet"))
    seen = dict.fromkeys(first, 1) | {d: 2 if d in first else 1 for d in third}
    prio, prio_seen = priorities(console, 1), priorities(console, 1, seen)
    assert all(prio_seen[d] == pytest.approx(prio[d] / (1 + 0.1 * seen[d])) for d in third)
    assert fourth == expected_topk(catalog, prio_seen, 4_000, seed=0, at_round=2)
    assert set(third) - set(fourth)  # some consumed documents gave way to unseen ones of lower cells


def test_seen_counts_recorded_elsewhere_are_picked_up(catalog: Catalog, tmp_path: Path) -> None:
    console = make_console(catalog)
    first = selected_ids(console.select(0, 4_000, tmp_path / "a.parquet"))  # builds the label index
    other = Console(catalog, "run")  # e.g. a reader process's console on the same run
    other.record_consumed(first)
    second = selected_ids(console.select(1, 4_000, tmp_path / "b.parquet"))
    assert not set(first) & set(second)


def test_record_consumed_counts_every_occurrence(catalog: Catalog) -> None:
    console = make_console(catalog)
    console.record_consumed([5, 5, 7])
    console.record_consumed(np.array([5, 9]))
    counts = dict(catalog.execute("SELECT doc_id, count FROM seen_counts WHERE run_id = 'run'"))
    assert counts == {5: 3, 7: 1, 9: 1}


def test_gumbel_is_seeded_and_favours_high_priority(catalog: Catalog, tmp_path: Path) -> None:
    console = make_console(catalog, mode="gumbel")
    learn(console, 2)
    budget = 15_000
    a = selected_ids(console.select(2, budget, tmp_path / "a.parquet"))
    b = selected_ids(console.select(2, budget, tmp_path / "b.parquet"))
    assert a == b
    other_seed = make_console(catalog, "seed1", mode="gumbel", seed=1)
    learn(other_seed, 2)
    c = selected_ids(other_seed.select(2, budget, tmp_path / "c.parquet"))
    assert c != a
    topk = selected_ids(console.select(2, budget, tmp_path / "t.parquet", mode="topk"))
    assert set(a) != set(topk)  # it samples, it is not the greedy order
    prio = priorities(console, 2)
    mean = float(np.mean(list(prio.values())))
    assert np.mean([prio[d] for d in a]) > mean + 0.1


def test_random_ignores_priority(catalog: Catalog, tmp_path: Path) -> None:
    learnt = make_console(catalog, "learnt")
    learn(learnt, 2)
    flat = make_console(catalog, "flat", prior={"quality": {"low": 5.0}})
    a = selected_ids(learnt.select(2, 10_000, tmp_path / "a.parquet", mode="random"))
    b = selected_ids(flat.select(2, 10_000, tmp_path / "b.parquet", mode="random"))
    assert a == b  # same seed and round: the same documents, whatever the weights
    high = [labels_of(doc_index(d))["quality"] == 2 for d in a]
    assert abs(np.mean(high) - 1 / 3) < 0.08
    assert catalog.execute("SELECT mode FROM selections WHERE run_id = 'learnt'")[0][0] == "random"


# ----- ablations ----------------------------------------------------------------------------------------
def test_single_agent_ablation(catalog: Catalog, tmp_path: Path) -> None:
    console = make_console(catalog, "domain-only", agents=["domain"])
    console.update(
        1,
        {
            d: (1.0 if labels_of(doc_index(d))["domain"] == 1 else -1.0)
            for d in console.draw_probes(1)["doc_id"].to_pylist()
        },
    )
    state = console.state()
    assert list(state.w) == ["domain"] and state.theta == {"domain": 1.0}
    got = selected_ids(console.select(1, 4_000, tmp_path / "sel.parquet"))
    assert all(labels_of(doc_index(d))["domain"] == 1 for d in got)  # priority follows that agent alone


def test_fixed_weights_leave_memory_and_theta_unchanged(catalog: Catalog) -> None:
    console = make_console(catalog, fixed_weights=True, prior={"quality": {"high": 0.4}})
    before = console.state()
    learn(console, 3)
    after = console.state()
    assert after.round == 3 and after.w == before.w and after.theta == before.theta
    assert catalog.execute("SELECT count(DISTINCT round) FROM probes")[0][0] == 3


def test_init_from_copies_the_learnt_state(catalog: Catalog) -> None:
    source = make_console(catalog, "source")
    learn(source, 2)
    learnt = source.state()
    target = Console(catalog, "target", paper(seed=5))
    target.start(init_from="source")
    start = target.state()
    assert start.round == 0 and start.w == learnt.w and start.theta == learnt.theta
    assert catalog.execute("SELECT init_from FROM runs WHERE run_id = 'target'")[0][0] == "source"
    with pytest.raises(ConsoleError, match="no such run"):
        Console(catalog, "third").start(init_from="missing")


def test_rescoring_rebuilds_the_label_index(catalog: Catalog, tmp_path: Path) -> None:
    console = make_console(catalog, agents=["domain"], prior={"domain": {"code": 1.0}})
    before = selected_ids(console.select(0, 2_000, tmp_path / "a.parquet"))
    catalog.execute("UPDATE scores SET label = 1 - label WHERE agent = 'domain'")
    catalog.execute("INSERT INTO scores VALUES ('quality', -1, NULL, NULL)")  # changes the fingerprint
    after = selected_ids(console.select(0, 2_000, tmp_path / "b.parquet"))
    assert all(labels_of(doc_index(d))["domain"] == 1 for d in before)
    assert all(labels_of(doc_index(d))["domain"] == 0 for d in after)


def test_pass_in_chunks_is_the_same(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = make_console(catalog, "whole")
    learn(whole, 1)
    expected = selected_ids(whole.select(1, 6_000, tmp_path / "a.parquet"))
    monkeypatch.setattr(console_module, "_CHUNK_ROWS", 250)  # 2 shards of 600 rows: 5 ranges
    monkeypatch.setattr(console_module, "_CELL_CHUNK_ROWS", 250)  # (the pass over doc_cells likewise)
    chunked = Console(catalog, "whole")
    assert selected_ids(chunked.select(1, 6_000, tmp_path / "b.parquet")) == expected
    # (the console keeps no per-document table any more: the streaming pass itself sees every document once)
    counted = chunked._pass("pass_counts")
    assert pc.sum(counted["num_docs"]).as_py() == len(selectable(catalog))


def test_many_rounds_stay_finite(catalog: Catalog, tmp_path: Path) -> None:
    console = make_console(catalog, mode="gumbel")
    for r in range(1, 6):
        probes = console.draw_probes(r)["doc_id"].to_pylist()
        console.update(r, quality_rewards(probes))
        console.record_consumed(selected_ids(console.select(r, 3_000, tmp_path / f"r{r}.parquet")))
    state = console.state()
    assert all(math.isfinite(v) for w in state.w.values() for v in w.values())


def test_read_only_catalog_counts_stale_cells_without_writing(catalog: Catalog) -> None:
    """The fixture's scores were inserted behind the catalog's back: its cell statistics are stale. Read-only,
    the console counts the cells in a pass and writes nothing; writable, it recounts them: the same cells."""
    console = make_console(catalog)
    catalog.read_only = True  # type: ignore[attr-defined]  (the seam read-only opening sets)
    assert not catalog.ensure_cells()
    with console._agents_registered():  # what every console call registers
        counted = console._cells(with_seen=True)
    assert catalog.get_meta("cells_key") is None
    assert catalog.execute("SELECT count(*) FROM cell_stats") == [(0,)]  # documents too came behind its back
    assert counted.num_rows > 10
    catalog.read_only = False  # type: ignore[attr-defined]
    with console._agents_registered():
        assert console._cells(with_seen=True).equals(counted)
    assert catalog.ensure_cells() and catalog.get_meta("cells_key") is not None


@pytest.mark.parametrize("with_key", [True, False])
def test_the_cut_sorts_only_the_end_of_the_order_and_takes_what_a_full_sort_takes(with_key: bool) -> None:
    rng = np.random.default_rng(7)
    n = 2 * console_module._PARTIAL_SORT_ROWS
    key = rng.integers(0, 5000, n).astype(np.float64) if with_key else None  # ties, broken by h then doc_id
    h = rng.integers(0, 2**20, n, dtype=np.uint64)
    doc_id = rng.permutation(n).astype(np.int64)
    tokens = rng.integers(1, 400, n).astype(np.int32)
    full = np.lexsort((doc_id, h) if key is None else (doc_id, h, key))
    for budget in (0, 10, int(tokens.sum()) // 3, int(tokens.sum()) - 5, int(tokens.sum()) * 2):
        cum = np.cumsum(tokens[full], dtype=np.int64)
        expected = np.sort(full[cum <= budget])
        got = np.sort(console_module._prefix_within(key, h, doc_id, tokens, budget))
        np.testing.assert_array_equal(got, expected)
