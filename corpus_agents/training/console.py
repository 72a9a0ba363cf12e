"""The console: fuses agents' labels into priorities, learns from probe rewards, selects each round's documents."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from corpus_agents.config import ConsoleConfig
from corpus_agents.errors import CorpusAgentsError
from corpus_agents.scoring.catalog import Catalog, quote_literal
from corpus_agents.sqlfiles import fragment
from corpus_agents.training.selection import ShardRef, write_snapshot

SQL_FILE = "console.sql"
MODES = ("topk", "gumbel", "random")
Mode = Literal["topk", "gumbel", "random"]
# Packed label tuples (see sql/console.sql) are computed through DOUBLE products: exact below 2**53.
_MAX_CELLS = 2**53
# A level past every real one ("the whole corpus fits the budget"), and a round past every recorded one.
_ALL_LEVELS = 2**62
_LATEST = 2**31 - 1
# Documents per range when the label index is built (hash tables of this size stay in cache).
_CHUNK_ROWS = 1_000_000


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


class Console:
    """One run's console over a catalog: its state lives in the catalog tables of `sql/console.sql`.

    It works on its own cursor of the catalog (`Catalog.cursor()`), so its temp tables (the documents' packed
    labels, kept between rounds) are private to it; close it (or use it as a context manager) when done.
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
        self.db.run(SQL_FILE, "agents_table", agents=self.config.agents)
        self.agent_labels: list[tuple[str, int, int]] = self.db.run(SQL_FILE, "agent_strides")
        _, num_labels, stride = self.agent_labels[-1]
        if stride * (num_labels + 1) > _MAX_CELLS:
            raise ConsoleError(f"the agents {self.config.agents} have too many label combinations (> 2**53)")
        self._docs_key: tuple[Any, ...] | None = None  # cache_fingerprint of the built console_docs
        self._seen_key: tuple[Any, ...] | None = None  # seen_fingerprint its seen column reflects

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    # ----- run and state ----------------------------------------------------------------------------
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
            with self.db.registered("console_prior", prior):
                self.db.run(SQL_FILE, "init_memory", run_id=self.run_id, init_from=init_from)
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
    def draw_probes(self, round: int) -> pa.Table:
        """The probe documents of `round` (doc_id, shard_id, row_idx, row_group, tokens), deterministic.

        For every agent and every label that has documents, `probes_per_label` documents drawn uniformly
        from that label (fewer if it has fewer), seeded by (seed, round), deduplicated: one probe's reward
        serves the labels of every agent. Documents with null or empty text are never drawn.
        """
        self._require_started()
        self._ensure_docs()
        params = {"seed": self.config.seed, "round": round, "m": self.config.probes_per_label}
        return self.db.arrow(SQL_FILE, "draw_probes", **params)

    def update(self, round: int, probe_rewards: Mapping[int, float]) -> ConsoleState:
        """Record a round's probe rewards (already standardised) and learn from them; returns the new state.

        Agent memories take one step per round toward their labels' mean rewards, then theta moves toward the
        agents whose preferred labels earned more (see `learn_round`). Re-running a recorded round replaces it.
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
        with self.db.transaction():
            self.db.run(SQL_FILE, "delete_round", run_id=self.run_id, round=round)
            with self.db.registered("console_rewards", rewards):
                self.db.run(SQL_FILE, "insert_probes", run_id=self.run_id, round=round)
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
    def select(self, round: int, budget_tokens: int, path: str | Path, mode: Mode | None = None) -> Path:
        """Select the documents to train on after `round` (with the state of that round) into a snapshot.

        Priority S(x) = (sum_A theta_A * w_hat_A[l_A(x)]) / (1 + lambda * c(x)), computed per cell (label
        tuple, seen count) in SQL; a document an agent could not label counts w_hat = 0.5 for that agent (the
        middle of its range: neither preferred nor avoided). `topk`: highest S first, equal priorities (cells
        included) in an order seeded by (seed, round) or by the tie-break agent's raw score; `gumbel`:
        Gumbel-top-k over S / gumbel_tau; `random`: a seeded uniform order (the warm-up). The selection is the
        longest prefix of that order within the budget (never over it). `mode` overrides the config's (e.g.
        `random` for the warm-up). Rows are written in doc_id order; the reader shuffles.
        """
        mode = mode or self.config.mode
        if budget_tokens < 0:
            raise ConsoleError(f"the token budget must be >= 0, got {budget_tokens}")
        if mode not in MODES:
            raise ConsoleError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        state_round = self._state_round(round)
        self._ensure_docs()
        cfg = self.config
        self.db.run(
            SQL_FILE,
            "cells",
            run_id=self.run_id,
            state_round=state_round,
            decay_lambda=cfg.decay_lambda,
            mode=mode,
        )
        self.db.run(SQL_FILE, "ranked_macro")  # binds to this round's console_cells
        order = {
            "seed": cfg.seed,
            "round": round,
            "mode": mode,
            "by_score": cfg.tie_break != "hash",
            "gumbel_tau": cfg.gumbel_tau,
        }
        level, remaining = self.db.run(SQL_FILE, "boundary_level", budget=budget_tokens)[0]
        if level is None:
            level, bucket, remaining = _ALL_LEVELS, 0, 0
        else:
            bucket, remaining = self.db.run(
                SQL_FILE, "boundary_bucket", **order, level=level, remaining=remaining
            )[0]
        rows = self.db.arrow(
            SQL_FILE, "select_docs", **order, level=level, bucket=bucket, remaining=remaining
        )
        tokens = pc.sum(rows["tokens"]).as_py() or 0
        shards = {s.shard_id: ShardRef.of(s) for s in self.catalog.shards()}
        path = write_snapshot(path, rows, shards, root=self.catalog.dir)
        self.db.run(
            SQL_FILE,
            "insert_selection",
            run_id=self.run_id,
            round=round,
            path=str(path),
            num_docs=rows.num_rows,
            tokens=tokens,
            mode=mode,
            budget=budget_tokens,
        )
        return path

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
        in_step = self._docs_key is not None and self._seen_key == self._seen_fingerprint()
        with self.db.transaction(), self.db.registered("console_consumed", consumed):
            self.db.run(SQL_FILE, "record_consumed", run_id=self.run_id)
            if round is not None:
                self.db.run(SQL_FILE, "mark_round_consumed", run_id=self.run_id, round=round)
            if in_step:
                self.db.run(SQL_FILE, "consumed_into_docs")
        self._seen_key = self._seen_fingerprint() if in_step else None

    # ----- internals --------------------------------------------------------------------------------
    def _run_exists(self, run_id: str) -> bool:
        return self.db.run(SQL_FILE, "run_row", run_id=run_id) != []

    def _stored_run(self) -> tuple[ConsoleConfig, str | None] | None:
        rows = self.db.run(SQL_FILE, "run_row", run_id=self.run_id)
        if not rows:
            return None
        row = rows[0]
        return ConsoleConfig.from_dict(json.loads(row[0])), row[1]

    def _config_json(self) -> str:
        return json.dumps(self.config.to_dict(), sort_keys=True)

    def _state_round(self, round: int) -> int:
        """The last recorded round at or before `round`; raises if the run has none."""
        at = self.db.run(SQL_FILE, "state_round", run_id=self.run_id, round=round)[0][0]
        if at is None:
            raise ConsoleError(f"run {self.run_id!r} has no state at round {round}; call start() first")
        return at

    def _seen_fingerprint(self) -> tuple[Any, ...]:
        return self.db.run(SQL_FILE, "seen_fingerprint", run_id=self.run_id)[0]

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

    def _ensure_docs(self) -> None:
        """Make `console_docs` current: rebuilt if documents or scores changed, seen counts resynced if they
        changed behind this console (record_consumed keeps them in step otherwise)."""
        key = self.db.run(SQL_FILE, "cache_fingerprint")[0]
        if key != self._docs_key:
            self._docs_key = self._seen_key = None
            self._build_docs()
            self._docs_key = key
        seen = self._seen_fingerprint()
        if seen != self._seen_key:
            self.db.run(SQL_FILE, "sync_seen", run_id=self.run_id)
            self._seen_key = seen

    def _build_docs(self) -> None:
        """Build `console_docs`: every selectable document and its packed label tuple.

        This is the one join of the documents with every agent's scores; rounds reuse it. It is built range
        by range of doc ids (see docs_cache_chunks) so that its hash tables stay small.
        """
        terms, joins = [], []
        for i, (agent, num_labels, stride) in enumerate(self.agent_labels):
            fill = {"i": i, "agent_lit": quote_literal(agent), "max_label": num_labels - 1, "stride": stride}
            terms.append(fragment(SQL_FILE, "docs_cache_cell_term").format(**fill))
            joins.append(fragment(SQL_FILE, "docs_cache_join").format(**fill))
        tie = "NULL"
        if self.config.tie_break != "hash":
            names = [agent for agent, _, _ in self.agent_labels]
            i = names.index(self.config.tie_break) if self.config.tie_break in names else len(names)
            if i == len(names):
                joins.append(
                    fragment(SQL_FILE, "docs_cache_join").format(
                        i=i, agent_lit=quote_literal(self.config.tie_break)
                    )
                )
            tie = f"s{i}.score"
        insert = fragment(SQL_FILE, "docs_cache_insert").format(
            cell="\n".join(terms), joins="\n".join(joins), tie=tie
        )
        self.db.run(SQL_FILE, "docs_cache_create")
        for lo, hi in self.db.run(SQL_FILE, "docs_cache_chunks", chunk_rows=_CHUNK_ROWS):
            self.db.execute(insert, {"bytes_per_token": self.config.bytes_per_token, "lo": lo, "hi": hi})
