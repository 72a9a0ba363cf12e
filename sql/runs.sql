-- Statements about training runs (corpus_agents/training/runs.py and trainer.py), one per `-- name:` block.

-- name: schema
-- Held-out reference loss of each task at each round of a run (written by the trainer).
CREATE TABLE IF NOT EXISTS round_metrics (
    run_id       VARCHAR NOT NULL,
    round        INTEGER NOT NULL,
    step         BIGINT NOT NULL,
    tokens       BIGINT NOT NULL,
    task         VARCHAR NOT NULL,
    heldout_loss DOUBLE NOT NULL,
    PRIMARY KEY (run_id, round, step, task)
);

-- Tokens and FLOPs of each kind of work (train, probe, reference, eval) at each round record of a run: since
-- the previous record and since the start (written by the trainer; FLOPs estimated as 2 or 6 x N x tokens,
-- see training/compute.py). `eval` is reported, not charged: a run's cost is train + probe + reference.
-- Catalogs made before compute was counted gain the table, empty for their old runs, on first use.
CREATE TABLE IF NOT EXISTS round_compute (
    run_id       VARCHAR NOT NULL,
    round        INTEGER NOT NULL,
    step         BIGINT NOT NULL,
    kind         VARCHAR NOT NULL,
    tokens       BIGINT NOT NULL,
    flops        DOUBLE NOT NULL,
    total_tokens BIGINT NOT NULL,
    total_flops  DOUBLE NOT NULL,
    PRIMARY KEY (run_id, round, step, kind)
);

-- name: record_metric
INSERT OR REPLACE INTO round_metrics VALUES ($run_id, $round, $step, $tokens, $task, $loss);

-- name: record_compute
INSERT OR REPLACE INTO round_compute
VALUES ($run_id, $round, $step, $kind, $tokens, $flops, $total_tokens, $total_flops);

-- name: list_runs
WITH last AS (SELECT run_id, max(round) AS round FROM collab_weights GROUP BY run_id),
theta AS (
    SELECT c.run_id, string_agg(c.agent || ' ' || round(c.theta, 3), ', ' ORDER BY c.agent) AS theta
    FROM collab_weights c JOIN last USING (run_id, round) GROUP BY c.run_id
),
loss AS (
    SELECT run_id, arg_max(mean_loss, step) AS heldout_loss, max(step) AS steps, max(tokens) AS tokens
    FROM (SELECT run_id, step, tokens, avg(heldout_loss) AS mean_loss FROM round_metrics GROUP BY ALL)
    GROUP BY run_id
),
cost AS (  -- the cumulative cost at each record: training + probes + reference gradients
    SELECT run_id, step,
           sum(total_flops) FILTER (WHERE kind <> 'eval') AS flops,
           sum(total_flops) FILTER (WHERE kind IN ('probe', 'reference')) AS reward_flops
    FROM round_compute GROUP BY run_id, step
),
compute AS (
    SELECT run_id, arg_max(flops, step) AS compute_flops,
           arg_max(reward_flops / nullif(flops, 0), step) AS probe_share
    FROM cost GROUP BY run_id
)
SELECT r.run_id, r.init_from, last.round AS rounds, loss.steps, loss.tokens AS train_tokens,
       compute.compute_flops, round(compute.probe_share, 4) AS probe_share,
       round(loss.heldout_loss, 4) AS heldout_loss, theta.theta
FROM runs r LEFT JOIN last USING (run_id) LEFT JOIN theta USING (run_id) LEFT JOIN loss USING (run_id)
LEFT JOIN compute USING (run_id)
ORDER BY r.created_at;

-- name: agent_signal
-- Whether each agent carries signal (console v2 runs), over every round that measured its advantage over
-- random selection (collab_weights.reward, with reward_se): the rounds, the mean advantage, t = that mean
-- divided by its standard error across the rounds, and the mean split-half reliability of its label effects.
-- Each round's probes are fresh and the advantage is read on the half its preferences were not learnt from,
-- so an agent without signal has rounds of mean 0 whatever it learnt before: t is a one-sample t over the
-- rounds (NULL below 3 rounds). A single round's advantage / reward_se is not such a test: the two halves'
-- estimates share their data, so its spread is wider than 1 under no signal (about 1.2 to 1.5).
SELECT run_id, agent, count(*) AS rounds, avg(reward) AS advantage,
       CASE WHEN count(*) >= 3 THEN avg(reward) / nullif(stddev_samp(reward) / sqrt(count(*)), 0) END AS t,
       avg(reliability) AS reliability
FROM collab_weights WHERE reward_se > 0
GROUP BY run_id, agent
ORDER BY run_id, agent;

-- name: selection_of
-- The given round's selection, or the run's last one when the round is NULL.
SELECT round, path FROM selections
WHERE run_id = $run_id AND ($round IS NULL OR round = $round)
ORDER BY round DESC LIMIT 1;

-- name: label_shares
-- Share of the documents of `selected` (doc_id, registered by runs.label_shares) per label of every agent;
-- a document an agent has not labelled counts as '(none)'.
SELECT a.name AS agent, coalesce(l.name, '(none)') AS label, count(*) AS docs,
       count(*) / sum(count(*)) OVER (PARTITION BY a.name) AS share
FROM selected s
CROSS JOIN agents a
LEFT JOIN scores sc ON sc.doc_id = s.doc_id AND sc.agent = a.name
LEFT JOIN agent_labels l ON l.agent = a.name AND l.label_id = sc.label
GROUP BY a.name, coalesce(l.name, '(none)')
ORDER BY agent, share DESC, label;

-- name: export_labels
SELECT l.* FROM exported e JOIN doc_labels l USING (doc_id) ORDER BY l.doc_id;

-- name: reset_agent_memory
-- A fresh memory for an agent replaced since the run started (`train --reset-agent`): w = 0 for each of its
-- current labels at $round, and nothing recorded for it after that round.
DELETE FROM agent_memory WHERE run_id = $run_id AND agent = $agent AND round >= $round;
INSERT INTO agent_memory (run_id, round, agent, label_id, w)
SELECT $run_id, $round, agent, label_id, 0.0 FROM agent_labels WHERE agent = $agent;

-- name: selection_tokens
-- A selection's tokens as the console counted them (the catalog's estimate).
SELECT tokens FROM selections WHERE run_id = $run_id AND round = $round;
