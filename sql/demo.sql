-- The SQL summaries `corpus-agents demo` prints and runs: plain SQL a user can run with `corpus-agents query`.
-- Each block's first comment line is the title the demo shows above it.

-- name: domains
-- Documents, kilobytes and mean quality score per domain
SELECT domain, count(*) AS docs, round(sum(text_bytes) / 1e3) AS kb, round(avg(quality_score), 3) AS mean_quality
FROM doc_labels GROUP BY ALL ORDER BY mean_quality DESC;

-- name: quality_bins
-- Share of each quality bin per domain (%)
PIVOT (SELECT domain, quality, round(100.0 * n / sum(n) OVER (PARTITION BY domain), 1) AS pct
       FROM (SELECT domain, quality, count(*) AS n FROM doc_labels GROUP BY ALL))
ON quality USING first(pct) GROUP BY domain ORDER BY domain;

-- name: topics
-- Topics: size, top terms and the domain they come from most
SELECT topic, count(*) AS docs, mode(domain) AS main_domain, round(avg(quality_score), 3) AS mean_quality
FROM doc_labels GROUP BY ALL ORDER BY docs DESC;

-- name: theta
-- How the collaboration weights moved (theta per round, run `method`); a PIVOT over the data takes no
-- parameters, so the demo's run id is written here.
PIVOT (SELECT round, agent, round(theta, 3) AS theta FROM collab_weights WHERE run_id = 'method')
ON agent USING first(theta) ORDER BY round;

-- name: memory
-- What each agent learnt to prefer (agent memory w after the last round of run $run_id)
SELECT m.agent, string_agg(l.name || ' ' || round(m.w, 2), ', ' ORDER BY m.w DESC) AS w
FROM agent_memory m JOIN agent_labels l ON l.agent = m.agent AND l.label_id = m.label_id
WHERE m.run_id = $run_id AND m.round = (SELECT max(round) FROM agent_memory WHERE run_id = $run_id)
GROUP BY m.agent ORDER BY m.agent;
