-- Statements the console runs (corpus_agents/training/console.py), one per `-- name:` block. `$x` are bound
-- parameters; `{x}` are fragments filled in by console.py (identifiers and literals always quoted there).
--
-- The console keeps no per-document state and no temp table between calls. Arrow tables it registers for
-- the length of one call:
--   console_agents (agent, pos, num_labels, stride): the run's agents; a document's label tuple is packed
--       into one BIGINT `cell` = sum_A (label_A + 1) * stride_A, label_A = -1 (packed 0) when unlabelled.
--   console_counted (cell, seen, num_docs, tokens): the run's cells, from the catalog's cell statistics
--       (cell_stats, kept by the catalog as parts are committed) split by the sparse seen counts.
--   console_quotas: what a streaming pass over the documents (pass_docs) keeps of each cell.
--   console_cellmap (catalog_cell, cell): the catalog's packed cells (doc_cells, cell_stats) re-packed for
--       the run's agents, when the two differ (an agent subset or another agent order).
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
-- Each round's probe draw, as draw_probes made it, so that update takes the same draw without a second
-- pass: which (agent, label) stratum drew which document (paper: per label too), with the document's row group
-- and tokens; `cells_key` is the catalog's Catalog.cells_key() at the draw: a draw over other documents or
-- scores is not reused.
CREATE TABLE IF NOT EXISTS probe_draws (
    run_id    VARCHAR NOT NULL,
    round     INTEGER NOT NULL,
    cells_key VARCHAR NOT NULL,
    agent     VARCHAR NOT NULL,
    label_id  BIGINT NOT NULL,
    doc_id    BIGINT NOT NULL,
    row_group INTEGER NOT NULL,
    tokens    INTEGER NOT NULL
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
WITH listed AS (SELECT unnest($agents) AS agent, generate_subscripts($agents, 1) AS pos),
     counted AS (SELECT agent, CAST(max(label_id) + 1 AS BIGINT) AS num_labels FROM agent_labels GROUP BY agent)
SELECT l.agent, CAST(l.pos AS BIGINT) AS pos, c.num_labels,
       CAST(coalesce(product(c.num_labels + 1) OVER (ORDER BY l.pos ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 1)
            AS BIGINT) AS stride
FROM listed l JOIN counted c USING (agent)
ORDER BY l.pos;

-- name: catalog_cells
-- The run's cells with their documents and tokens, from the catalog's cell statistics (cell_stats): each
-- catalog cell's labels of the run's agents re-packed with the run's strides, summed over shards.
WITH repacked AS (
    SELECT CAST(sum(((c.cell // ca.stride) % (ca.num_labels + 1)) * r.stride) AS BIGINT) AS cell,
           any_value(c.num_docs) AS num_docs, any_value(c.tokens) AS tokens
    FROM cell_stats c CROSS JOIN console_agents r JOIN cell_agents ca ON ca.agent = r.agent
    GROUP BY c.shard_id, c.cell
)
SELECT cell, CAST(sum(num_docs) AS BIGINT) AS num_docs, CAST(sum(tokens) AS BIGINT) AS tokens
FROM repacked GROUP BY cell ORDER BY cell;

-- name: pass_chunks
-- Ranges of doc ids of about $chunk_rows documents (whole shards merged, big shards split): a pass over the
-- documents goes range by range so that each join's hash tables stay small.
WITH pieces AS (
    SELECT (CAST(shard_id AS BIGINT) << 32) + start AS lo,
           (CAST(shard_id AS BIGINT) << 32) + least(start + $chunk_rows, num_rows) AS hi,
           least($chunk_rows, num_rows - start) AS rows
    FROM (SELECT shard_id, max(row_idx) + 1 AS num_rows FROM docs GROUP BY shard_id),
         LATERAL (SELECT unnest(range(0, num_rows, $chunk_rows)) AS start)
),
numbered AS (SELECT *, floor((sum(rows) OVER (ORDER BY lo) - rows) / $chunk_rows) AS chunk FROM pieces)
SELECT min(lo), max(hi) FROM numbered GROUP BY chunk ORDER BY 1;

-- name: cell_map
-- console_cellmap: every catalog cell (cell_stats) with the run's cell, its labels of the run's agents
-- re-packed with the run's strides (the catalog's as VARCHAR: a HUGEINT).
SELECT CAST(c.cell AS VARCHAR) AS catalog_cell,
       CAST(sum(((c.cell // ca.stride) % (ca.num_labels + 1)) * r.stride) AS BIGINT) AS cell
FROM (SELECT DISTINCT cell FROM cell_stats) c CROSS JOIN console_agents r JOIN cell_agents ca ON ca.agent = r.agent
GROUP BY c.cell;

-- name: catalog_agents
SELECT agent, num_labels, CAST(stride AS VARCHAR) FROM cell_agents WHERE num_labels > 0;

-- name: cell_chunks
-- pass_chunks for a pass over `doc_cells`, from the cell statistics (no scan of the documents): ranges of
-- about $chunk_rows selectable documents, each shard's last range reaching to the next shard's first doc id.
WITH counted AS (SELECT shard_id, CAST(sum(num_docs) AS BIGINT) AS num_docs FROM cell_stats GROUP BY shard_id),
pieces AS (
    SELECT (CAST(shard_id AS BIGINT) << 32) + start AS lo,
           CASE WHEN start + $chunk_rows >= num_docs THEN CAST(shard_id + 1 AS BIGINT) << 32
                ELSE (CAST(shard_id AS BIGINT) << 32) + start + $chunk_rows END AS hi,
           least($chunk_rows, num_docs - start) AS rows
    FROM counted, LATERAL (SELECT unnest(range(0, num_docs, $chunk_rows)) AS start)
),
numbered AS (SELECT *, floor((sum(rows) OVER (ORDER BY lo) - rows) / $chunk_rows) AS chunk FROM pieces)
SELECT min(lo), max(hi) FROM numbered GROUP BY chunk ORDER BY 1;

-- name: pass_docs
-- The streaming pass's rows: every selectable document of doc ids [$lo, $hi) from `doc_cells` (the
-- catalog's packed cells, current: Catalog.ensure_cells) with its run's packed label tuple `cell`, its tokens,
-- its seen count in the run and `tie`. console.py fills in {cell} (the catalog's cell itself, or through
-- {cell_join}: console_cellmap), {joins} (the tie-break agent's scores, when one orders ties), the tie
-- column (that agent's raw score, or NULL) and {seen}/{seen_join} (pass_seen*).
SELECT d.doc_id, d.row_group,
       greatest(1, CAST(ceil(d.text_bytes / $bytes_per_token) AS INTEGER)) AS tokens,
       {cell} AS cell,
       CAST({tie} AS FLOAT) AS tie,
       {seen} AS seen
FROM (SELECT doc_id, row_group, text_bytes, cell AS full_cell FROM doc_cells WHERE doc_id >= $lo AND doc_id < $hi) d
{cell_join}
{joins}
{seen_join}

-- name: pass_cell_join
JOIN (SELECT CAST(catalog_cell AS HUGEINT) AS catalog_cell, cell FROM console_cellmap) k ON k.catalog_cell = d.full_cell

-- name: pass_seen
-- The run's seen counts are sparse (no row = 0): every document with its count ...
CAST(coalesce(c.count, 0) AS INTEGER)

-- name: pass_seen_join
LEFT JOIN (SELECT doc_id, count FROM seen_counts WHERE run_id = $run_id AND doc_id >= $lo AND doc_id < $hi) c
    ON c.doc_id = d.doc_id

-- name: pass_only_seen
-- ... or only the documents the run consumed (one join: the pass's work is that of a lookup per document).
CAST(c.count AS INTEGER)

-- name: pass_only_seen_join
JOIN (SELECT doc_id, count FROM seen_counts WHERE run_id = $run_id AND doc_id >= $lo AND doc_id < $hi) c
    ON c.doc_id = d.doc_id

-- name: pass_docs_scores
-- pass_docs over a catalog whose cell statistics are stale and that is read-only (Catalog.ensure_cells):
-- each document's labels joined from every agent's scores, one pass_cell_term and one pass_join per agent
-- (plus a join for the tie-break agent when it is not one of the run's).
SELECT d.doc_id, d.row_group,
       greatest(1, CAST(ceil(d.text_bytes / $bytes_per_token) AS INTEGER)) AS tokens,
       CAST(0 {cell} AS BIGINT) AS cell,
       CAST({tie} AS FLOAT) AS tie,
       {seen} AS seen
FROM (SELECT doc_id, row_group, text_bytes FROM docs
      WHERE doc_id >= $lo AND doc_id < $hi AND NOT text_null AND text_bytes > 0) d
{joins}
{seen_join}

-- name: pass_cell_term
-- A label outside the agent's declared range counts as unlabelled.
+ CASE WHEN s{i}.label BETWEEN 0 AND {max_label} THEN CAST(s{i}.label AS BIGINT) + 1 ELSE 0 END * {stride}

-- name: pass_join
LEFT JOIN (SELECT doc_id, label, score FROM scores WHERE agent = {agent_lit} AND doc_id >= $lo AND doc_id < $hi) s{i}
    ON s{i}.doc_id = d.doc_id

-- name: pass_counts
-- Documents and tokens per (cell, seen count) of the pass's documents.
SELECT cell, seen, count(*) AS num_docs, sum(tokens) AS tokens FROM ({pass}) GROUP BY ALL

-- name: pass_select
-- The documents a selection may take, with what orders them, in doc_id order. `console_quotas` (grp, cell,
-- seen, whole, h_max, h_min, fine_min) is registered by console.py: a cell taken whole gives every document;
-- any other gives those of hash h <= h_max and (gumbel, by_score) `fine` >= fine_min (gumbel: h >= h_min
-- first, below which no key reaches fine_min, so only the others' keys are computed): a prefix of the cell's
-- order (or of the level's) that holds its quota. `h` is a hash of doc_id seeded by (seed, round); `fine` is
-- topk's tie-break score (by_score) or gumbel's key priority / tau + Gumbel noise from h (sample's key, u(h) /
-- p(c), is computed by console.py); console.py fills in {extra}: those of them the mode needs.
SELECT doc_id, row_group, tokens, grp, h {extra} FROM (
    SELECT p.doc_id, p.row_group, p.tokens, q.grp, q.whole, p.h,
           CASE WHEN $mode = 'gumbel' THEN q.priority / $gumbel_tau
                                           - ln(-ln((CAST(p.h >> 11 AS DOUBLE) + 0.5) / CAST(2 ** 53 AS DOUBLE)))
                WHEN $mode = 'topk' AND $by_score THEN p.tie END AS fine,
           q.h_max, q.h_min, q.fine_min
    FROM (SELECT *, hash(doc_id, CAST($seed AS BIGINT), CAST($round AS BIGINT)) AS h FROM ({pass})) p
    JOIN console_quotas q ON q.cell = p.cell AND q.seen = p.seen
)
WHERE whole OR (h <= h_max AND h >= h_min AND (fine_min IS NULL OR fine >= fine_min))
ORDER BY doc_id

-- name: pass_probes
-- Probe candidates: documents whose hash (one per agent: {hashes}) is within their cell's threshold for that
-- agent (`console_quotas` (cell, h_max0, h_max1, ...), registered by console.py).
SELECT * FROM (
    SELECT p.doc_id, p.row_group, p.tokens, p.cell, {hashes}
    FROM ({pass}) p
) p JOIN console_quotas q USING (cell)
WHERE {within}

-- name: probe_hash
-- Paper: one hash for all agents, seeded by (seed, round).
hash(p.doc_id, CAST($seed AS BIGINT), CAST($round AS BIGINT), 'probe') AS h{i}

-- name: stratum_hash
-- v2: each (agent, label) stratum's own hash, seeded by (seed, round, agent, label).
hash(p.doc_id, CAST($seed AS BIGINT), CAST($round AS BIGINT), {agent_lit},
     CAST((p.cell // {stride}) % {num_labels_1} - 1 AS BIGINT), 'stratum') AS h{i}

-- name: probe_within
p.h{i} <= q.h_max{i}

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

-- name: cells
-- Fusion, by cells: documents grouped by (label tuple, seen count), each cell's priority
--   S = (sum_A theta_A * w_hat_A[l_A]) / (1 + lambda * seen),  w_hat_A = min-max normalised w_A (0.5 if flat),
-- an unlabelled document counting 0.5 for that agent (the middle: neither preferred nor avoided). `level`
-- ranks distinct priorities (1 = highest; cells of equal priority tie and share a level) in topk mode;
-- gumbel and random put every cell in level 1 and order documents individually.
WITH counted AS (SELECT * FROM console_counted),
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
FROM prioritised
ORDER BY cell, seen;

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

-- name: insert_strata
-- The strata records of the probes that have a reward this round (`console_strata` (agent, label_id,
-- doc_id): the round's draw, registered by console.py).
INSERT INTO probe_strata
SELECT $run_id, $round, s.agent, s.label_id, s.doc_id FROM console_strata s SEMI JOIN console_rewards USING (doc_id);

-- name: probe_labels
-- Every rewarded probe of the round with its label under each agent (-1: unlabelled) and whether the
-- agent's stratum of that label drew it.
SELECT p.doc_id, p.reward, a.agent,
       CASE WHEN s.label BETWEEN 0 AND a.num_labels - 1 THEN CAST(s.label AS BIGINT) ELSE -1 END AS label_id,
       ps.doc_id IS NOT NULL AS drawn
FROM probes p
CROSS JOIN console_agents a
LEFT JOIN scores s ON s.agent = a.agent AND s.doc_id = p.doc_id
LEFT JOIN probe_strata ps ON ps.run_id = p.run_id AND ps.round = p.round AND ps.agent = a.agent AND ps.doc_id = p.doc_id
WHERE p.run_id = $run_id AND p.round = $round
ORDER BY p.doc_id, a.pos;

-- name: half_of_probes
-- The split-half of each probe: a hash of doc_id seeded by (seed, round).
SELECT doc_id, CAST(hash(doc_id, CAST($seed AS BIGINT), CAST($round AS BIGINT), 'half') % 2 AS INTEGER) AS half
FROM probes WHERE run_id = $run_id AND round = $round ORDER BY doc_id;

-- name: label_sizes
-- Documents and tokens of every label that has documents, per agent (`console_counted`: the run's cells).
SELECT a.agent, (k.cell // a.stride) % (a.num_labels + 1) - 1 AS label_id, sum(k.num_docs) AS docs,
       sum(k.tokens) AS tokens
FROM console_counted k CROSS JOIN console_agents a
GROUP BY ALL HAVING label_id >= 0;

-- name: memory_precision_at
SELECT agent, label_id, w, coalesce(precision, 0.0) FROM agent_memory
WHERE run_id = $run_id AND round = $round ORDER BY agent, label_id;

-- name: cells_v2
-- Cells (label tuple, seen count) with S = sum_A theta_A * w_A[l_A] (an unlabelled document counts 0: the
-- fit's baseline) and the log-weight priority = S + $temp * ln d(seen), so exp(priority / temp) =
-- exp(S / temp) * d(seen): `sample` shares, Gumbel keys and top-k levels all follow it.
WITH counted AS (SELECT * FROM console_counted),
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
FROM prioritised
ORDER BY cell, seen;

-- name: stored_draw
SELECT agent, label_id, doc_id, row_group, tokens FROM probe_draws
WHERE run_id = $run_id AND round = $round AND cells_key = $cells_key
ORDER BY agent, label_id, doc_id;

-- name: record_draw
-- `console_draw` (agent, label_id, doc_id, row_group, tokens) is registered by console.py.
DELETE FROM probe_draws WHERE run_id = $run_id AND round = $round;
INSERT INTO probe_draws SELECT $run_id, $round, $cells_key, agent, label_id, doc_id, row_group, tokens FROM console_draw;
