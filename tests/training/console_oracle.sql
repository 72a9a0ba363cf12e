-- Test-only oracle: the console's per-document implementation before selection by cells (commit 88d35a1,
-- sql/console.sql), kept verbatim for tests/training/test_console_oracle.py, which runs these blocks on a
-- console's cursor and checks that the cell-based console selects and probes the same documents.
--   console_agents (agent, pos, num_labels, stride): registered by the test (the console's own table).
--   console_docs: every selectable document with its packed labels, tie score and seen count (temp table).
--   console_cells: one row per (cell, seen) for the round selected (temp table).

-- name: docs_cache_create
CREATE OR REPLACE TEMP TABLE console_docs (
    doc_id    BIGINT NOT NULL,
    row_group INTEGER NOT NULL,
    tokens    INTEGER NOT NULL,
    cell      BIGINT NOT NULL,
    tie       FLOAT,
    seen      INTEGER NOT NULL
);

-- name: docs_cache_insert
-- console.py fills in one docs_cache_cell_term and one docs_cache_join per agent (plus a join for the
-- tie-break agent when it is not one of the run's) and the tie column: that agent's raw score, or NULL.
INSERT INTO console_docs
SELECT d.doc_id, d.row_group,
       greatest(1, CAST(ceil(d.text_bytes / $bytes_per_token) AS INTEGER)) AS tokens,
       CAST(0 {cell} AS BIGINT) AS cell,
       CAST({tie} AS FLOAT) AS tie,
       0 AS seen
FROM (SELECT * FROM docs WHERE doc_id >= $lo AND doc_id < $hi AND NOT text_null AND text_bytes > 0) d
{joins};

-- name: docs_cache_cell_term
-- A label outside the agent's declared range counts as unlabelled.
+ CASE WHEN s{i}.label BETWEEN 0 AND {max_label} THEN CAST(s{i}.label AS BIGINT) + 1 ELSE 0 END * {stride}

-- name: docs_cache_join
LEFT JOIN (SELECT doc_id, label, score FROM scores WHERE agent = {agent_lit} AND doc_id >= $lo AND doc_id < $hi) s{i}
    ON s{i}.doc_id = d.doc_id

-- name: sync_seen
-- Copy the run's seen counts into console_docs (after a rebuild, or if they changed behind this console).
UPDATE console_docs SET seen = 0 WHERE seen <> 0;
UPDATE console_docs SET seen = s.count
FROM (SELECT doc_id, count FROM seen_counts WHERE run_id = $run_id) s
WHERE console_docs.doc_id = s.doc_id;

-- name: draw_probes
-- Up to $m documents per (agent, label), uniformly: the $m smallest of a hash seeded by (seed, round). One
-- hash for all agents, so a document drawn for one agent's label is likely drawn for others' too: the
-- union (one reward per document serves every agent) stays small while each label's sample stays uniform.
WITH labelled AS (
    SELECT a.agent, (k.cell // a.stride) % (a.num_labels + 1) - 1 AS label_id, k.doc_id,
           hash(k.doc_id, CAST($seed AS BIGINT), CAST($round AS BIGINT), 'probe') AS h
    FROM console_docs k CROSS JOIN console_agents a
),
drawn AS (
    SELECT unnest(min_by(doc_id, h, $m)) AS doc_id FROM labelled WHERE label_id >= 0 GROUP BY agent, label_id
)
SELECT k.doc_id, CAST(k.doc_id >> 32 AS INTEGER) AS shard_id, CAST(k.doc_id & 4294967295 AS INTEGER) AS row_idx,
       k.row_group, k.tokens
FROM console_docs k SEMI JOIN drawn USING (doc_id)
ORDER BY k.doc_id;

-- name: cells
-- Fusion, by cells: documents grouped by (label tuple, seen count), each cell's priority
--   S = (sum_A theta_A * w_hat_A[l_A]) / (1 + lambda * seen),  w_hat_A = min-max normalised w_A (0.5 if flat),
-- an unlabelled document counting 0.5 for that agent (the middle: neither preferred nor avoided). `level`
-- ranks distinct priorities (1 = highest; cells of equal priority tie and share a level) in topk mode;
-- gumbel and random put every cell in level 1 and order documents individually.
CREATE OR REPLACE TEMP TABLE console_cells AS
WITH counted AS (SELECT cell, seen, count(*) AS num_docs, sum(tokens) AS tokens FROM console_docs GROUP BY ALL),
memory AS (
    SELECT agent, label_id, w, min(w) OVER (PARTITION BY agent) AS lo, max(w) OVER (PARTITION BY agent) AS hi
    FROM agent_memory WHERE run_id = $run_id AND round = $state_round
),
w_hat AS (
    SELECT agent, label_id, CASE WHEN hi - lo > 1e-12 THEN (w - lo) / (hi - lo) ELSE 0.5 END AS w_hat FROM memory
),
fused AS (
    SELECT c.cell, c.seen, sum(t.theta * coalesce(h.w_hat, 0.5)) AS fused
    FROM counted c
    CROSS JOIN console_agents a
    JOIN collab_weights t ON t.run_id = $run_id AND t.round = $state_round AND t.agent = a.agent
    LEFT JOIN w_hat h ON h.agent = a.agent AND h.label_id = (c.cell // a.stride) % (a.num_labels + 1) - 1
    GROUP BY c.cell, c.seen
),
prioritised AS (
    SELECT c.cell, c.seen, c.num_docs, c.tokens, f.fused / (1 + $decay_lambda * c.seen) AS priority
    FROM counted c JOIN fused f USING (cell, seen)
)
SELECT *, CASE WHEN $mode = 'topk' THEN dense_rank() OVER (ORDER BY round(priority, 12) DESC) ELSE 1 END AS level
FROM prioritised;

-- name: ranked_macro
-- Every selectable document with its cell's priority and level and its place in the selection order:
-- (level, bucket) ascending, then `fine` descending, then `h` ascending. `h` is a hash of doc_id seeded by
-- (seed, round). topk: `fine` is the tie-break agent's raw score (by_score) or NULL (hash order); gumbel:
-- fine = S / tau + Gumbel noise from h (Gumbel-top-k: sampling without replacement in proportion to
-- exp(S / tau)); random: hash order. `bucket` is a coarse prefix of that order (the top 12 bits of h, or
-- the Gumbel key in steps of 1/256) so that only one bucket is ever sorted: selection stays linear.
CREATE OR REPLACE TEMP MACRO console_ranked(seed, salt, sel_mode, by_score, gumbel_tau) AS TABLE
SELECT k.doc_id, CAST(k.doc_id >> 32 AS INTEGER) AS shard_id, CAST(k.doc_id & 4294967295 AS INTEGER) AS row_idx,
       k.row_group, k.tokens, k.cell, c.priority, c.level,
       hash(k.doc_id, CAST(seed AS BIGINT), CAST(salt AS BIGINT)) AS h,
       CASE WHEN sel_mode = 'gumbel' THEN c.priority / gumbel_tau
                                          - ln(-ln((CAST(h >> 11 AS DOUBLE) + 0.5) / CAST(2 ** 53 AS DOUBLE)))
            WHEN sel_mode = 'topk' AND by_score THEN k.tie END AS fine,
       CASE WHEN sel_mode = 'gumbel' THEN -CAST(floor(fine * 256) AS BIGINT)
            WHEN sel_mode = 'topk' AND by_score THEN 0
            ELSE CAST(h >> 52 AS BIGINT) END AS bucket
FROM console_docs k JOIN console_cells c ON c.cell = k.cell AND c.seen = k.seen;

-- name: boundary_level
-- The first level that does not fit the budget whole, and the budget left for it (NULL level: all fit).
WITH levels AS (SELECT level, sum(tokens) AS tokens FROM console_cells GROUP BY level),
     upto AS (SELECT level, sum(tokens) OVER (ORDER BY level) AS upto FROM levels)
SELECT min(level) FILTER (WHERE upto > $budget), $budget - coalesce(max(upto) FILTER (WHERE upto <= $budget), 0)
FROM upto;

-- name: boundary_bucket
-- Within the boundary level: the first bucket that does not fit what is left, and what is left for it.
WITH buckets AS (
    SELECT bucket, sum(tokens) AS tokens
    FROM console_ranked($seed, $round, $mode, $by_score, $gumbel_tau)
    WHERE level = $level GROUP BY bucket
),
upto AS (SELECT bucket, sum(tokens) OVER (ORDER BY bucket) AS upto FROM buckets)
SELECT min(bucket) FILTER (WHERE upto > $remaining),
       $remaining - coalesce(max(upto) FILTER (WHERE upto <= $remaining), 0)
FROM upto;

-- name: select_docs
-- The selection: the longest prefix of the order whose tokens fit the budget. Whole levels and buckets
-- before the boundary, then the boundary bucket, the only part sorted document by document.
SELECT doc_id, shard_id, row_idx, row_group, priority, tokens, cell
FROM console_ranked($seed, $round, $mode, $by_score, $gumbel_tau)
WHERE level < $level OR (level = $level AND bucket < $bucket)
UNION ALL
SELECT doc_id, shard_id, row_idx, row_group, priority, tokens, cell
FROM (
    SELECT *, sum(tokens) OVER (ORDER BY fine DESC NULLS LAST, h, doc_id ROWS UNBOUNDED PRECEDING) AS upto
    FROM console_ranked($seed, $round, $mode, $by_score, $gumbel_tau)
    WHERE level = $level AND bucket = $bucket
)
WHERE upto <= $remaining
ORDER BY doc_id;

-- name: strata_table
-- Stratified probes: for every (agent, label) with documents, up to $m documents drawn uniformly from that
-- label, the $m smallest of a hash seeded by (seed, round, agent, label): each stratum draws independently
-- of the others, so a document's inclusion probability is 1 - prod_A (1 - min(1, m / N_A[l_A(x)])).
CREATE OR REPLACE TEMP TABLE console_strata AS
WITH labelled AS (
    SELECT a.agent, (k.cell // a.stride) % (a.num_labels + 1) - 1 AS label_id, k.doc_id
    FROM console_docs k CROSS JOIN console_agents a
)
SELECT agent, label_id, unnest(min_by(doc_id, h, $m)) AS doc_id
FROM (SELECT *, hash(doc_id, CAST($seed AS BIGINT), CAST($round AS BIGINT), agent, CAST(label_id AS BIGINT), 'stratum') AS h
      FROM labelled WHERE label_id >= 0)
GROUP BY agent, label_id;

-- name: strata_rows
SELECT agent, label_id, doc_id FROM console_strata ORDER BY agent, label_id, doc_id;

-- name: draw_strata_probes
-- The union of the strata's draws, one row per document.
SELECT k.doc_id, CAST(k.doc_id >> 32 AS INTEGER) AS shard_id, CAST(k.doc_id & 4294967295 AS INTEGER) AS row_idx,
       k.row_group, k.tokens
FROM console_docs k SEMI JOIN console_strata USING (doc_id)
ORDER BY k.doc_id;

-- name: cells_v2
-- Cells (label tuple, seen count) with S = sum_A theta_A * w_A[l_A] (an unlabelled document counts 0: the
-- fit's baseline) and the log-weight priority = S + $temp * ln d(seen), so exp(priority / temp) =
-- exp(S / temp) * d(seen): `sample` shares, Gumbel keys and top-k levels all follow it.
CREATE OR REPLACE TEMP TABLE console_cells AS
WITH counted AS (SELECT cell, seen, count(*) AS num_docs, sum(tokens) AS tokens FROM console_docs GROUP BY ALL),
fused AS (
    SELECT c.cell, c.seen, sum(t.theta * coalesce(m.w, 0.0)) AS score
    FROM counted c
    CROSS JOIN console_agents a
    JOIN collab_weights t ON t.run_id = $run_id AND t.round = $state_round AND t.agent = a.agent
    LEFT JOIN agent_memory m ON m.run_id = $run_id AND m.round = $state_round AND m.agent = a.agent
        AND m.label_id = (c.cell // a.stride) % (a.num_labels + 1) - 1
    GROUP BY c.cell, c.seen
),
prioritised AS (
    SELECT c.cell, c.seen, c.num_docs, c.tokens, f.score,
           f.score - $temp * ln(1 + $decay_lambda * c.seen) AS priority
    FROM counted c JOIN fused f USING (cell, seen)
)
SELECT *, CASE WHEN $mode = 'topk' THEN dense_rank() OVER (ORDER BY round(priority, 12) DESC) ELSE 1 END AS level
FROM prioritised;

-- name: cell_scores
SELECT cell, seen, tokens, score FROM console_cells ORDER BY cell, seen;

-- name: select_sample
-- `sample`: cell (cell, seen) gets `quota` tokens (`console_quotas`, computed by console.py), so each of its
-- documents the inclusion probability p = quota / the cell's tokens. Sequential Poisson sampling: a
-- document's key is u / p, with u uniform from a hash seeded by (seed, round), and the selection is the
-- longest prefix of the key order (ties: hash, doc_id) within $budget; when even the first document is over
-- it, that one alone. (Rewritten with the unbiased sampler; the per-document console cut each cell's hash
-- order at its quota instead.)
WITH docs AS (
    SELECT k.doc_id, k.row_group, k.tokens, k.cell, c.priority,
           hash(k.doc_id, CAST($seed AS BIGINT), CAST($round AS BIGINT)) AS h,
           (CAST(h >> 11 AS DOUBLE) + 0.5) / CAST(2 ** 53 AS DOUBLE) / least(1.0, q.quota / greatest(c.tokens, 1)) AS key
    FROM console_docs k
    JOIN console_quotas q ON q.cell = k.cell AND q.seen = k.seen
    JOIN console_cells c ON c.cell = k.cell AND c.seen = k.seen
    WHERE q.quota > 0
),
ordered AS (
    SELECT *, sum(tokens) OVER (ORDER BY key, h, doc_id ROWS UNBOUNDED PRECEDING) AS upto,
           row_number() OVER (ORDER BY key, h, doc_id) AS position
    FROM docs
)
SELECT doc_id, CAST(doc_id >> 32 AS INTEGER) AS shard_id, CAST(doc_id & 4294967295 AS INTEGER) AS row_idx,
       row_group, priority, tokens, cell
FROM ordered
WHERE upto <= $budget OR (position = 1 AND $budget > 0)
ORDER BY doc_id;
