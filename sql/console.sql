-- Statements the console runs (corpus_agents/console.py), one per `-- name:` block. `$x` are bound
-- parameters; `{x}` are fragments filled in by console.py (identifiers and literals always quoted there).
--
-- Per-connection temp objects (the console works on its own cursor, so they are private to it):
--   console_agents (agent, pos, num_labels, stride): the run's agents; a document's label tuple is packed
--       into one BIGINT `cell` = sum_A (label_A + 1) * stride_A, label_A = -1 (packed 0) when unlabelled.
--   console_docs (doc_id, row_group, tokens, cell, tie, seen): every selectable document (text not null or
--       empty) with its packed labels and its seen count in the run; built once per run and process (rebuilt
--       when the scores change), seen counts kept in step with `seen_counts` by record_consumed.
--   console_cells (cell, seen, num_docs, tokens, priority, level): one row per cell for the round selected.
-- shard_id and row_idx are read off doc_id (doc_id = shard_id << 32 | row_idx, see schema.sql).

-- name: schema
-- One row per run; `config` is the ConsoleConfig as JSON; round 0 of every table below is the initial state.
CREATE TABLE IF NOT EXISTS runs (
    run_id     VARCHAR PRIMARY KEY,
    config     JSON NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    init_from  VARCHAR
);
-- Agent memory w_A[label] after each round, with what the round measured (NULL / 0 where not probed).
CREATE TABLE IF NOT EXISTS agent_memory (
    run_id     VARCHAR NOT NULL,
    round      INTEGER NOT NULL,
    agent      VARCHAR NOT NULL,
    label_id   SMALLINT NOT NULL,
    w          DOUBLE NOT NULL,
    reward     DOUBLE,
    num_probes INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, round, agent, label_id)
);
-- Collaboration weights theta_A after each round, with the agent's round reward R_A (Eq. 7).
CREATE TABLE IF NOT EXISTS collab_weights (
    run_id VARCHAR NOT NULL,
    round  INTEGER NOT NULL,
    agent  VARCHAR NOT NULL,
    theta  DOUBLE NOT NULL,
    reward DOUBLE,
    PRIMARY KEY (run_id, round, agent)
);
-- The probe documents of each round and their (standardised) rewards; labels come from `scores`.
CREATE TABLE IF NOT EXISTS probes (
    run_id VARCHAR NOT NULL,
    round  INTEGER NOT NULL,
    doc_id BIGINT NOT NULL,
    reward DOUBLE NOT NULL,
    PRIMARY KEY (run_id, round, doc_id)
);
-- The selection snapshot written for each round.
CREATE TABLE IF NOT EXISTS selections (
    run_id        VARCHAR NOT NULL,
    round         INTEGER NOT NULL,
    path          VARCHAR NOT NULL,
    num_docs      BIGINT NOT NULL,
    tokens        BIGINT NOT NULL,
    mode          VARCHAR NOT NULL,
    budget_tokens BIGINT NOT NULL,
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (run_id, round)
);
-- How many times the trainer consumed each document in a run (c(x) of the decay); no row = 0.
CREATE TABLE IF NOT EXISTS seen_counts (
    run_id VARCHAR NOT NULL,
    doc_id BIGINT NOT NULL,
    count  INTEGER NOT NULL
);
-- The rounds whose consumption is in seen_counts: a resumed run that replays a round counts it once.
CREATE TABLE IF NOT EXISTS consumed_rounds (
    run_id VARCHAR NOT NULL,
    round  INTEGER NOT NULL,
    PRIMARY KEY (run_id, round)
);
-- Version 2: which (agent, label) strata drew each probe of a round (a probe drawn twice has two rows).
CREATE TABLE IF NOT EXISTS probe_strata (
    run_id   VARCHAR NOT NULL,
    round    INTEGER NOT NULL,
    agent    VARCHAR NOT NULL,
    label_id SMALLINT NOT NULL,
    doc_id   BIGINT NOT NULL,
    PRIMARY KEY (run_id, round, agent, label_id, doc_id)
);
-- Version 2 columns (added to catalogs made before it; NULL in the paper preset's rows):
--   agent_memory.reward is the round's label effect beta, `se` its standard error, `precision` that of w;
--   collab_weights.reward is the agent's advantage over random, `reward_se` its standard error and
--   `reliability` the split-half reliability of its label effects (Spearman-Brown corrected);
--   selections: the entropy (nats) of the selected tokens over label cells, the largest cell's share and
--   the number of cells (every mode, both presets).
ALTER TABLE agent_memory ADD COLUMN IF NOT EXISTS se DOUBLE;
ALTER TABLE agent_memory ADD COLUMN IF NOT EXISTS precision DOUBLE;
ALTER TABLE collab_weights ADD COLUMN IF NOT EXISTS reward_se DOUBLE;
ALTER TABLE collab_weights ADD COLUMN IF NOT EXISTS reliability DOUBLE;
ALTER TABLE selections ADD COLUMN IF NOT EXISTS cell_entropy DOUBLE;
ALTER TABLE selections ADD COLUMN IF NOT EXISTS top_cell_share DOUBLE;
ALTER TABLE selections ADD COLUMN IF NOT EXISTS num_cells BIGINT;

-- name: run_row
SELECT config, init_from FROM runs WHERE run_id = $run_id;

-- name: insert_run
INSERT INTO runs (run_id, config, init_from) VALUES ($run_id, $config, $init_from);

-- name: label_names
SELECT agent, name FROM agent_labels;

-- name: agents_table
-- The run's agents in config order, with their label counts and the stride of their packed label.
CREATE OR REPLACE TEMP TABLE console_agents AS
WITH listed AS (SELECT unnest($agents) AS agent, generate_subscripts($agents, 1) AS pos),
     counted AS (SELECT agent, CAST(max(label_id) + 1 AS BIGINT) AS num_labels FROM agent_labels GROUP BY agent)
SELECT l.agent, l.pos, c.num_labels,
       CAST(coalesce(product(c.num_labels + 1) OVER (ORDER BY l.pos ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 1)
            AS BIGINT) AS stride
FROM listed l JOIN counted c USING (agent)
ORDER BY l.pos;

-- name: agent_strides
SELECT agent, num_labels, stride FROM console_agents ORDER BY pos;

-- name: docs_cache_create
CREATE OR REPLACE TEMP TABLE console_docs (
    doc_id    BIGINT NOT NULL,
    row_group INTEGER NOT NULL,
    tokens    INTEGER NOT NULL,
    cell      BIGINT NOT NULL,
    tie       FLOAT,
    seen      INTEGER NOT NULL
);

-- name: docs_cache_chunks
-- Ranges of doc ids of about $chunk_rows documents (whole shards merged, big shards split): the cache is
-- built range by range so that each join's hash tables stay small (measured at 10M documents: a third
-- less CPU than one join over everything, and a third of the memory).
WITH pieces AS (
    SELECT (CAST(shard_id AS BIGINT) << 32) + start AS lo,
           (CAST(shard_id AS BIGINT) << 32) + least(start + $chunk_rows, num_rows) AS hi,
           least($chunk_rows, num_rows - start) AS rows
    FROM (SELECT shard_id, max(row_idx) + 1 AS num_rows FROM docs GROUP BY shard_id),
         LATERAL (SELECT unnest(range(0, num_rows, $chunk_rows)) AS start)
),
numbered AS (SELECT *, floor((sum(rows) OVER (ORDER BY lo) - rows) / $chunk_rows) AS chunk FROM pieces)
SELECT min(lo), max(hi) FROM numbered GROUP BY chunk ORDER BY 1;

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

-- name: cache_fingerprint
-- Changes whenever documents or scores are added, replaced or removed: the docs cache is then rebuilt.
SELECT (SELECT count(*) FROM docs), (SELECT count(*) FROM scores), (SELECT max(committed_at) FROM score_parts),
       (SELECT count(*) FROM agent_labels);

-- name: seen_fingerprint
SELECT count(*), coalesce(sum(count), 0) FROM seen_counts WHERE run_id = $run_id;

-- name: sync_seen
-- Copy the run's seen counts into console_docs (after a rebuild, or if they changed behind this console).
UPDATE console_docs SET seen = 0 WHERE seen <> 0;
UPDATE console_docs SET seen = s.count
FROM (SELECT doc_id, count FROM seen_counts WHERE run_id = $run_id) s
WHERE console_docs.doc_id = s.doc_id;

-- name: init_memory
-- Round 0: w from the `init_from` run's last round where it has the (agent, label), else the config prior
-- (registered as `console_prior` (agent, name, w)), else 0; the precision of w likewise, else
-- $prior_strength (NULL for the paper preset, which has none).
INSERT INTO agent_memory (run_id, round, agent, label_id, w, precision)
SELECT $run_id, 0, l.agent, l.label_id, coalesce(src.w, p.w, 0.0), coalesce(src.precision, $prior_strength)
FROM agent_labels l
JOIN console_agents a ON a.agent = l.agent
LEFT JOIN (
    SELECT agent, label_id, w, precision FROM agent_memory
    WHERE run_id = $init_from AND round = (SELECT max(round) FROM agent_memory WHERE run_id = $init_from)
) src ON src.agent = l.agent AND src.label_id = l.label_id
LEFT JOIN console_prior p ON p.agent = l.agent AND p.name = l.name;

-- name: latest_theta
-- A run's theta at its last recorded round (for init_from).
SELECT agent, theta FROM collab_weights
WHERE run_id = $run_id AND round = (SELECT max(round) FROM collab_weights WHERE run_id = $run_id);

-- name: state_round
-- The last recorded round at or before $round.
SELECT max(round) FROM collab_weights WHERE run_id = $run_id AND round <= $round;

-- name: memory_at
SELECT agent, label_id, w FROM agent_memory WHERE run_id = $run_id AND round = $round ORDER BY agent, label_id;

-- name: theta_at
SELECT agent, theta FROM collab_weights WHERE run_id = $run_id AND round = $round;

-- name: state_memory
SELECT m.agent, l.name, m.w
FROM agent_memory m JOIN agent_labels l ON l.agent = m.agent AND l.label_id = m.label_id
WHERE m.run_id = $run_id AND m.round = $round
ORDER BY m.agent, m.label_id;

-- name: delete_round
-- A round that is recorded again (crash-resume) replaces its previous record.
DELETE FROM probes WHERE run_id = $run_id AND round = $round;
DELETE FROM agent_memory WHERE run_id = $run_id AND round = $round;
DELETE FROM collab_weights WHERE run_id = $run_id AND round = $round;
DELETE FROM probe_strata WHERE run_id = $run_id AND round = $round;

-- name: insert_probes
-- `console_rewards` (doc_id, reward) is registered by console.py.
INSERT INTO probes SELECT $run_id, $round, doc_id, reward FROM console_rewards;

-- name: label_rewards
-- R_A[j]: the mean reward of the round's probes with label j under agent A (Eq. 4).
SELECT s.agent, s.label AS label_id, avg(p.reward) AS reward, count(*) AS num_probes
FROM probes p
JOIN scores s ON s.doc_id = p.doc_id
JOIN console_agents a ON a.agent = s.agent
WHERE p.run_id = $run_id AND p.round = $round AND s.label BETWEEN 0 AND a.num_labels - 1
GROUP BY s.agent, s.label;

-- name: insert_memory
-- `console_memory` (agent, label_id, w, reward, num_probes[, se, precision]) is registered by console.py.
INSERT INTO agent_memory BY NAME SELECT $run_id AS run_id, $round AS round, * FROM console_memory;

-- name: insert_theta
-- `console_theta` (agent, theta, reward[, reward_se, reliability]) is registered by console.py.
INSERT INTO collab_weights BY NAME SELECT $run_id AS run_id, $round AS round, * FROM console_theta;

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

-- name: insert_selection
INSERT OR REPLACE INTO selections (run_id, round, path, num_docs, tokens, mode, budget_tokens, created_at,
                                   cell_entropy, top_cell_share, num_cells)
VALUES ($run_id, $round, $path, $num_docs, $tokens, $mode, $budget, current_timestamp, $entropy, $top_share,
        $num_cells);

-- name: record_consumed
-- `console_consumed` (doc_id) is registered by console.py; each occurrence counts once.
MERGE INTO seen_counts t
USING (SELECT $run_id AS run_id, doc_id, count(*) AS n FROM console_consumed GROUP BY doc_id) c
ON t.run_id = c.run_id AND t.doc_id = c.doc_id
WHEN MATCHED THEN UPDATE SET count = t.count + c.n
WHEN NOT MATCHED THEN INSERT VALUES (c.run_id, c.doc_id, c.n);

-- name: round_consumed
SELECT count(*) FROM consumed_rounds WHERE run_id = $run_id AND round = $round;

-- name: mark_round_consumed
INSERT INTO consumed_rounds VALUES ($run_id, $round);

-- name: consumed_into_docs
-- The same increments applied to console_docs, when it is built and in step.
UPDATE console_docs SET seen = console_docs.seen + c.n
FROM (SELECT doc_id, count(*) AS n FROM console_consumed GROUP BY doc_id) c
WHERE console_docs.doc_id = c.doc_id;

-- ----- Version 2 (console.preset: v2) ---------------------------------------------------------------------

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

-- name: insert_strata
-- The strata records of the probes that have a reward this round.
INSERT INTO probe_strata
SELECT $run_id, $round, s.agent, s.label_id, s.doc_id FROM console_strata s SEMI JOIN console_rewards USING (doc_id);

-- name: probe_labels
-- Every rewarded probe of the round with its label under each agent (-1: unlabelled) and whether the
-- agent's stratum of that label drew it.
SELECT p.doc_id, p.reward, a.agent, (k.cell // a.stride) % (a.num_labels + 1) - 1 AS label_id,
       s.doc_id IS NOT NULL AS drawn
FROM probes p
JOIN console_docs k ON k.doc_id = p.doc_id
CROSS JOIN console_agents a
LEFT JOIN probe_strata s ON s.run_id = p.run_id AND s.round = p.round AND s.agent = a.agent AND s.doc_id = p.doc_id
WHERE p.run_id = $run_id AND p.round = $round
ORDER BY p.doc_id, a.pos;

-- name: half_of_probes
-- The split-half of each probe: a hash of doc_id seeded by (seed, round).
SELECT doc_id, CAST(hash(doc_id, CAST($seed AS BIGINT), CAST($round AS BIGINT), 'half') % 2 AS INTEGER) AS half
FROM probes WHERE run_id = $run_id AND round = $round ORDER BY doc_id;

-- name: label_sizes
-- Documents and tokens of every label that has documents, per agent.
SELECT a.agent, (k.cell // a.stride) % (a.num_labels + 1) - 1 AS label_id, count(*) AS docs, sum(k.tokens) AS tokens
FROM console_docs k CROSS JOIN console_agents a
GROUP BY ALL HAVING label_id >= 0;

-- name: memory_precision_at
SELECT agent, label_id, w, coalesce(precision, 0.0) FROM agent_memory
WHERE run_id = $run_id AND round = $round ORDER BY agent, label_id;

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
-- `sample`: cell (cell, seen) gets `quota` tokens (`console_quotas`, computed by console.py). Its documents
-- go in the order of a hash seeded by (seed, round); those that fit the quota whole are taken, and the
-- one that crosses it is taken with probability (quota - tokens before it) / its tokens, so a cell's
-- expected tokens are its quota. Buckets of the hash (its top 12 bits) keep this linear: whole buckets
-- are taken or left on their sums, and only the bucket where a cell's quota falls is sorted.
WITH docs AS (
    SELECT k.doc_id, k.row_group, k.tokens, k.cell, k.seen, c.priority, q.quota,
           hash(k.doc_id, CAST($seed AS BIGINT), CAST($round AS BIGINT)) AS h, CAST(h >> 52 AS BIGINT) AS bucket
    FROM console_docs k
    JOIN console_quotas q ON q.cell = k.cell AND q.seen = k.seen
    JOIN console_cells c ON c.cell = k.cell AND c.seen = k.seen
    WHERE q.quota > 0
),
buckets AS (
    SELECT cell, seen, bucket, sum(tokens) AS tokens, any_value(quota) AS quota FROM docs GROUP BY ALL
),
placed AS (
    SELECT cell, seen, bucket, quota,
           sum(tokens) OVER (PARTITION BY cell, seen ORDER BY bucket ROWS UNBOUNDED PRECEDING) - tokens AS before,
           before + tokens AS upto
    FROM buckets
),
whole AS (
    SELECT d.* FROM docs d JOIN placed p USING (cell, seen, bucket) WHERE p.upto <= p.quota
),
boundary AS (
    SELECT d.*, p.before + sum(d.tokens) OVER (PARTITION BY d.cell, d.seen ORDER BY d.h, d.doc_id
                                                ROWS UNBOUNDED PRECEDING) - d.tokens AS cum_before
    FROM docs d JOIN placed p USING (cell, seen, bucket)
    WHERE p.before < p.quota AND p.upto > p.quota
),
taken AS (
    SELECT doc_id, row_group, tokens, cell, priority FROM whole
    UNION ALL
    SELECT doc_id, row_group, tokens, cell, priority FROM boundary
    WHERE cum_before + tokens <= quota
       OR (cum_before < quota
           AND (CAST(hash(doc_id, CAST($seed AS BIGINT), CAST($round AS BIGINT), 'rounding') >> 11 AS DOUBLE) + 0.5)
               / CAST(2 ** 53 AS DOUBLE) * tokens < quota - cum_before)
)
SELECT doc_id, CAST(doc_id >> 32 AS INTEGER) AS shard_id, CAST(doc_id & 4294967295 AS INTEGER) AS row_idx,
       row_group, priority, tokens, cell
FROM taken
ORDER BY doc_id;
