-- Statements of `corpus-agents report` (corpus_agents/report/collect.py), one per `-- name:` block. `$runs`
-- is the list of run ids the report covers; every statement only reads (the tables are the console's and
-- the trainer's, see console.sql and runs.sql; the label shares of a selection are runs.sql's).

-- name: known_runs
-- Every run the catalog knows: the console's runs, plus runs with held-out metrics but no console row.
SELECT run_id, min(created_at) AS created
FROM (
    SELECT run_id, created_at FROM runs
    UNION ALL
    SELECT DISTINCT run_id, CAST(NULL AS TIMESTAMP) FROM round_metrics
)
GROUP BY run_id
ORDER BY created NULLS LAST, run_id;

-- name: heldout
-- Held-out reference loss of each task at every recorded round (and the final evaluation) of the runs.
SELECT run_id, round, step, tokens, task, heldout_loss
FROM round_metrics WHERE list_contains($runs, run_id)
ORDER BY run_id, step, task;

-- name: compute
-- At every round record: the cumulative training tokens, cost (training + probes + reference gradients, in
-- FLOPs; held-out evaluation is not charged) and the part of the cost spent on rewards.
SELECT run_id, round, step,
       sum(total_tokens) FILTER (WHERE kind = 'train') AS train_tokens,
       sum(total_flops) FILTER (WHERE kind <> 'eval') AS compute_flops,
       sum(total_flops) FILTER (WHERE kind IN ('probe', 'reference')) AS reward_flops
FROM round_compute WHERE list_contains($runs, run_id)
GROUP BY run_id, round, step
ORDER BY run_id, step, round;

-- name: theta
SELECT run_id, round, agent, theta FROM collab_weights
WHERE list_contains($runs, run_id)
ORDER BY run_id, round, agent;

-- name: memory
-- Agent memory w per label (by name) after each round.
SELECT m.run_id, m.round, m.agent, coalesce(l.name, '#' || m.label_id) AS label, m.w
FROM agent_memory m
LEFT JOIN agent_labels l ON l.agent = m.agent AND l.label_id = m.label_id
WHERE list_contains($runs, m.run_id)
ORDER BY m.run_id, m.round, m.agent, m.label_id;

-- name: selections
SELECT run_id, round, path, num_docs, tokens, mode FROM selections
WHERE list_contains($runs, run_id)
ORDER BY run_id, round;
