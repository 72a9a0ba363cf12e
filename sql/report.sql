-- Statements of `corpus-agents report` (corpus_agents/report.py), one per `-- name:` block. `$runs` is the
-- list of run ids the report covers; every statement only reads (the tables are the console's and the
-- trainer's, see console.sql and runs.sql).

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

-- name: label_shares
-- Share of a round's selected documents (`report_selected` (doc_id), registered by report.py) per label of
-- every agent; a document an agent has not labelled counts as '(none)'.
SELECT a.name AS agent, coalesce(l.name, '(none)') AS label, count(*) AS docs,
       count(*) / sum(count(*)) OVER (PARTITION BY a.name) AS share
FROM report_selected s
CROSS JOIN agents a
LEFT JOIN scores sc ON sc.doc_id = s.doc_id AND sc.agent = a.name
LEFT JOIN agent_labels l ON l.agent = a.name AND l.label_id = sc.label
GROUP BY a.name, coalesce(l.name, '(none)')
ORDER BY agent, share DESC, label;
