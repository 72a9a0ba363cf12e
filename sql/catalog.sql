-- Statements the catalog runs, one per `-- name:` block. `$x` are bound parameters; `{x}` are identifiers
-- or literals filled in by catalog.py (always quoted there).

-- name: table_names
-- The catalog's tables (to tell a new catalog from an existing one).
SELECT table_name FROM information_schema.tables;

-- name: init_meta
INSERT OR IGNORE INTO meta VALUES ('schema_version', $version);

-- name: get_meta
SELECT value FROM meta WHERE key = $key;

-- name: set_meta
INSERT OR REPLACE INTO meta VALUES ($key, $value);

-- name: corpus_size
-- Shards, documents and bytes on disk of the registered corpus.
SELECT count(*), coalesce(sum(num_rows), 0), coalesce(sum(num_bytes), 0) FROM shards;

-- name: shards
SELECT shard_id, uri, num_rows, num_bytes, fingerprint, num_row_groups, text_column, row_group_hashes
FROM shards ORDER BY shard_id;

-- name: next_shard_id
SELECT coalesce(max(shard_id) + 1, 0) FROM shards;

-- name: insert_shard
INSERT INTO shards (shard_id, uri, num_rows, num_bytes, fingerprint, num_row_groups, row_group_rows, text_column,
                    row_group_hashes)
VALUES ($shard_id, $uri, $num_rows, $num_bytes, $fingerprint, $num_row_groups, $row_group_rows, $text_column,
        $row_group_hashes);

-- name: set_row_group_hashes
UPDATE shards SET row_group_hashes = $row_group_hashes WHERE shard_id = $shard_id;

-- name: forget_shard
-- A changed shard before it is registered again under its id (`init --refresh`): its row, its documents,
-- and every agent's parts, scores and failures of it (the next `score` rescores that shard alone).
DELETE FROM scores
WHERE doc_id >= (CAST($shard_id AS BIGINT) << 32) AND doc_id < (CAST($shard_id + 1 AS BIGINT) << 32);
DELETE FROM score_parts WHERE shard_id = $shard_id;
DELETE FROM part_failures WHERE shard_id = $shard_id;
DELETE FROM docs WHERE shard_id = $shard_id;
DELETE FROM shards WHERE shard_id = $shard_id;
DELETE FROM cell_stats WHERE shard_id = $shard_id;
DELETE FROM doc_cells
WHERE doc_id >= (CAST($shard_id AS BIGINT) << 32) AND doc_id < (CAST($shard_id + 1 AS BIGINT) << 32);

-- name: shard_uris
SELECT shard_id, uri FROM shards;

-- name: part_paths
SELECT agent, shard_id, path FROM score_parts;

-- name: selection_paths
-- (the console's table: `catalog.py` runs this only once it exists)
SELECT run_id, round, path FROM selections;

-- name: set_selection_path
UPDATE selections SET path = $path WHERE run_id = $run_id AND round = $round;

-- name: set_shard_uri
UPDATE shards SET uri = $uri WHERE shard_id = $shard_id;

-- name: set_part_path
UPDATE score_parts SET path = $path WHERE agent = $agent AND shard_id = $shard_id;

-- name: set_agent_config
-- A stored config rewritten with workspace-relative paths, and its parts' fingerprints with it.
UPDATE agents SET config = $config WHERE name = $agent;
UPDATE score_parts SET fingerprint = $new WHERE agent = $agent AND fingerprint = $old;

-- name: insert_docs
-- Arrow table `new_docs` (shard_id, row_idx, row_group, text_bytes, text_null) is registered by the caller.
INSERT INTO docs
SELECT (CAST(shard_id AS BIGINT) << 32) | row_idx, shard_id, row_idx, row_group, text_bytes, text_null
FROM new_docs;

-- name: commit_part
-- Replace an (agent, shard) part's scores and manifest row; runs inside one transaction.
DELETE FROM scores
WHERE agent = $agent AND doc_id >= (CAST($shard_id AS BIGINT) << 32) AND doc_id < (CAST($shard_id + 1 AS BIGINT) << 32);
INSERT INTO scores SELECT $agent, doc_id, label, score FROM read_parquet($read_path);
-- (timestamps are set explicitly: on a conflict INSERT OR REPLACE updates only the columns it lists)
INSERT OR REPLACE INTO score_parts (agent, shard_id, fingerprint, path, num_rows, complete, seconds,
                                    read_s, decode_s, score_s, write_s, committed_at)
VALUES ($agent, $shard_id, $fingerprint, $path, $num_rows, $complete, $read_s + $decode_s + $score_s + $write_s,
        $read_s, $decode_s, $score_s, $write_s, current_timestamp);
DELETE FROM part_failures WHERE agent = $agent AND shard_id = $shard_id;

-- name: drop_parts
-- Remove an agent's parts (list of shard ids) whose agent changed (model file or config), before rescoring.
DELETE FROM scores
WHERE agent = $agent AND CAST(doc_id >> 32 AS INTEGER) IN (SELECT unnest($shard_ids));
DELETE FROM score_parts WHERE agent = $agent AND shard_id IN (SELECT unnest($shard_ids));

-- name: sample_rows
-- A seeded uniform sample of {rows} selectable documents (a sample size and seed cannot be bound parameters:
-- corpus.py fills in both as integers).
SELECT shard_id, row_idx FROM docs WHERE NOT text_null AND text_bytes > 0
USING SAMPLE reservoir({rows} ROWS) REPEATABLE ({seed});

-- name: parts
SELECT agent, shard_id, fingerprint, path, num_rows, complete, read_s, decode_s, score_s, write_s FROM score_parts;

-- name: failures
SELECT agent, shard_id, error FROM part_failures ORDER BY 1, 2;

-- name: record_failure
INSERT OR REPLACE INTO part_failures (agent, shard_id, error, failed_at)
VALUES ($agent, $shard_id, $error, current_timestamp);

-- name: agent_rows
SELECT name, kind, config FROM agents ORDER BY added_at, name;

-- name: agent_exists
SELECT 1 FROM agents WHERE name = $agent;

-- name: agent_added_at
SELECT added_at FROM agents WHERE name = $agent;

-- name: insert_agent
-- An agent's config and its labels (label_id = position in $labels). A replaced agent keeps its place in the
-- agent order ($added_at: when the first of its name was added).
INSERT INTO agents (name, kind, config, added_at) VALUES ($agent, $kind, $config, coalesce($added_at, current_timestamp));
INSERT INTO agent_labels
SELECT $agent, generate_subscripts(CAST($labels AS VARCHAR[]), 1) - 1, unnest(CAST($labels AS VARCHAR[]));

-- name: drop_agent
DELETE FROM scores WHERE agent = $agent;
DELETE FROM score_parts WHERE agent = $agent;
DELETE FROM part_failures WHERE agent = $agent;
DELETE FROM agent_labels WHERE agent = $agent;
DELETE FROM agents WHERE name = $agent;

-- name: doc_labels_head
-- One row per document, one label column and one `<agent>_score` column per agent (joins appended below).
CREATE OR REPLACE VIEW doc_labels AS
SELECT d.doc_id, d.shard_id, d.row_idx, d.text_bytes

-- name: doc_labels_from
FROM docs d

-- name: doc_labels_agent_columns
, l{i}.name AS {label_col}, s{i}.score AS {score_col}

-- name: doc_labels_agent_join
LEFT JOIN (SELECT doc_id, label, score FROM scores WHERE agent = {agent_lit}) s{i} ON s{i}.doc_id = d.doc_id
LEFT JOIN (SELECT label_id, name FROM agent_labels WHERE agent = {agent_lit}) l{i} ON l{i}.label_id = s{i}.label

-- name: status_agents
SELECT a.name AS agent, a.kind,
       (SELECT count(*) FROM agent_labels l WHERE l.agent = a.name) AS labels,
       count(p.shard_id) FILTER (WHERE p.complete) AS parts_committed,
       count(p.shard_id) FILTER (WHERE NOT p.complete) AS parts_partial,
       (SELECT count(*) FROM part_failures f WHERE f.agent = a.name) AS parts_failed,
       coalesce(sum(p.num_rows), 0) AS docs_scored
FROM agents a LEFT JOIN score_parts p ON p.agent = a.name
GROUP BY a.name, a.kind ORDER BY a.name;

-- name: documents_view
-- The text of every document, read from the shards when a query needs it (joins by doc_id are a scan).
-- The shards' paths are filled in absolute: `catalog.py` recreates the view when the workspace moves.
CREATE OR REPLACE VIEW documents AS
SELECT (CAST(s.shard_id AS BIGINT) << 32) | p.file_row_number AS doc_id, s.shard_id,
       CAST(p.file_row_number AS INTEGER) AS row_idx, p.{text_column} AS text
FROM read_parquet({uris}, filename = true, file_row_number = true, union_by_name = true) p
JOIN (VALUES {shard_uris}) s(shard_id, uri) ON s.uri = p.filename;

-- name: documents_view_empty
-- `documents` of a workspace without shards: the same columns, no rows.
CREATE OR REPLACE VIEW documents AS
SELECT NULL::BIGINT AS doc_id, NULL::INTEGER AS shard_id, NULL::INTEGER AS row_idx, NULL::VARCHAR AS text
WHERE false;

-- name: column_quantiles
-- The `column` agent's --quantiles: quantiles (linear interpolation) of a numeric corpus column over every
-- shard at the fractions $fractions, and how many documents have a value (NULL and NaN have none).
SELECT quantile_cont(v, $fractions) AS edges, count(v) AS n
FROM (SELECT CAST(p.{column} AS DOUBLE) AS v FROM read_parquet({uris}, union_by_name = true) p)
WHERE NOT isnan(v);

-- name: sandbox
-- A reader's connection (`query`): only the shards' and parts' directories can be read, no file written
-- (COPY ... TO is refused before it gets here), nothing attached or installed, and the settings locked so
-- that the user's SQL cannot undo them.
SET allowed_directories = $dirs;
SET enable_external_access = false;
SET lock_configuration = true;

-- name: settings_locked
-- Whether this database instance's settings are locked already (DuckDB shares one instance between the
-- connections of a process to one file: a second reader finds the first one's sandbox in place).
SELECT current_setting('lock_configuration');

-- name: memory_limit
-- DuckDB's memory limit (the database's, as DuckDB shows it: '18.8 GiB') and whether settings are locked.
SELECT current_setting('memory_limit'), current_setting('lock_configuration');

-- name: set_memory_limit
SET memory_limit = $limit;

-- name: lock_settings
-- A reader's connection when shards or parts are on object storage (fsspec needs external access).
SET lock_configuration = true;

-- name: part_consistency
-- Where the manifest and the scores disagree: committed parts without exactly their rows of scores (rows
-- deleted or added behind the catalog's back, e.g. by `query --writable`), and scores without a part.
WITH counted AS (
    SELECT agent, CAST(doc_id >> 32 AS INTEGER) AS shard_id, count(*) AS scored FROM scores GROUP BY ALL
)
SELECT p.agent, p.shard_id, p.num_rows, coalesce(c.scored, 0) AS scored
FROM score_parts p LEFT JOIN counted c ON c.agent = p.agent AND c.shard_id = p.shard_id
WHERE coalesce(c.scored, 0) <> p.num_rows
UNION ALL
SELECT c.agent, c.shard_id, NULL, c.scored
FROM counted c ANTI JOIN score_parts p ON c.agent = p.agent AND c.shard_id = p.shard_id
ORDER BY 1, 2;

-- name: repoint_parts
-- Compaction: the parts of these shards now live in one file (`scoring/compaction.py`); the number of rows
-- repointed comes back so that the caller can check none vanished meanwhile.
UPDATE score_parts SET path = $path WHERE agent = $agent AND shard_id IN (SELECT unnest($shard_ids));
SELECT count(*) FROM score_parts WHERE agent = $agent AND path = $path;
-- ----- cell statistics (schema.sql: cell_stats, cell_agents) --------------------------------------------

-- name: cell_strides
-- Every agent's label count and stride as they should be now (agent order: added_at, name).
WITH counted AS (
    SELECT a.name AS agent, a.added_at, coalesce(max(l.label_id) + 1, 0) AS num_labels
    FROM agents a LEFT JOIN agent_labels l ON l.agent = a.name GROUP BY a.name, a.added_at
)
SELECT agent, num_labels FROM counted ORDER BY added_at, agent;

-- name: stored_strides
SELECT agent, num_labels, stride FROM cell_agents;

-- name: set_strides
-- `new_strides` (agent, num_labels, stride) is registered by catalog.py.
DELETE FROM cell_agents;
INSERT INTO cell_agents SELECT agent, num_labels, CAST(stride AS HUGEINT) FROM new_strides;

-- name: recount_shard
-- One shard's documents' cells from its documents and every agent's scores of it (the work is the shard's
-- size), then its cell statistics from them. {cell_type} is BIGINT when every packed cell fits in one
-- (catalog.py: measured 40% faster), else HUGEINT.
DELETE FROM doc_cells
WHERE doc_id >= (CAST($shard_id AS BIGINT) << 32) AND doc_id < (CAST($shard_id + 1 AS BIGINT) << 32);
INSERT INTO doc_cells
WITH a AS (SELECT agent, num_labels, CAST(stride AS {cell_type}) AS stride FROM cell_agents)
SELECT d.doc_id, d.row_group, d.text_bytes, coalesce(s.cell, 0)
FROM (SELECT doc_id, row_group, text_bytes FROM docs WHERE shard_id = $shard_id AND NOT text_null AND text_bytes > 0) d
LEFT JOIN (
    SELECT s.doc_id, sum(CAST(s.label + 1 AS {cell_type}) * a.stride) AS cell
    FROM scores s JOIN a ON a.agent = s.agent AND s.label BETWEEN 0 AND a.num_labels - 1
    WHERE s.doc_id >= (CAST($shard_id AS BIGINT) << 32) AND s.doc_id < (CAST($shard_id + 1 AS BIGINT) << 32)
    GROUP BY s.doc_id
) s ON s.doc_id = d.doc_id
ORDER BY d.doc_id;
DELETE FROM cell_stats WHERE shard_id = $shard_id;
INSERT INTO cell_stats
SELECT $shard_id, cell, count(*), sum(greatest(1, CAST(ceil(text_bytes / $bytes_per_token) AS INTEGER)))
FROM doc_cells
WHERE doc_id >= (CAST($shard_id AS BIGINT) << 32) AND doc_id < (CAST($shard_id + 1 AS BIGINT) << 32)
GROUP BY cell;

-- name: recount_all
-- Every shard's cells from scratch (a removed or replaced agent, or a catalog whose statistics are stale).
DELETE FROM doc_cells;
INSERT INTO doc_cells
WITH a AS (SELECT agent, num_labels, CAST(stride AS {cell_type}) AS stride FROM cell_agents)
SELECT d.doc_id, d.row_group, d.text_bytes, coalesce(s.cell, 0)
FROM (SELECT doc_id, row_group, text_bytes FROM docs WHERE NOT text_null AND text_bytes > 0) d
LEFT JOIN (
    SELECT s.doc_id, sum(CAST(s.label + 1 AS {cell_type}) * a.stride) AS cell
    FROM scores s JOIN a ON a.agent = s.agent AND s.label BETWEEN 0 AND a.num_labels - 1
    GROUP BY s.doc_id
) s ON s.doc_id = d.doc_id
ORDER BY d.doc_id;
DELETE FROM cell_stats;
INSERT INTO cell_stats
SELECT CAST(doc_id >> 32 AS INTEGER), cell, count(*),
       sum(greatest(1, CAST(ceil(text_bytes / $bytes_per_token) AS INTEGER)))
FROM doc_cells GROUP BY ALL;

-- name: cells_key
-- What the cell statistics were counted from: documents, scores, labels and parts. Stored in `meta` by each
-- change made through the catalog; a change made behind its back (SQL on `scores`) leaves them stale, and
-- the console then recounts.
-- `doc_cells` is the key's first word: statistics counted before it existed are stale.
SELECT concat_ws(' ', 'doc_cells', (SELECT count(*) FROM docs), (SELECT count(*) FROM scores),
                 (SELECT count(*) FROM agent_labels), (SELECT count(*) FROM score_parts),
                 (SELECT max(committed_at) FROM score_parts));

