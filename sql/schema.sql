-- corpus-agents catalog schema. One DuckDB file per workspace; bump SCHEMA_VERSION in catalog.py on change.

CREATE TABLE IF NOT EXISTS meta (
    key   VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);

-- One row per registered Parquet shard. doc_id = shard_id << 32 | row_idx. `uri` is relative to the
-- workspace for a shard inside it (so a copied workspace reads its own copy), else absolute or a URL.
-- `fingerprint` hashes the size and footer, `row_group_hashes` each row group's bytes (corpus.ShardCheck).
CREATE TABLE IF NOT EXISTS shards (
    shard_id         INTEGER PRIMARY KEY,
    uri              VARCHAR NOT NULL UNIQUE,
    num_rows         BIGINT NOT NULL,
    num_bytes        BIGINT NOT NULL,
    fingerprint      VARCHAR NOT NULL,
    num_row_groups   INTEGER NOT NULL,
    row_group_rows   BIGINT[] NOT NULL,
    text_column      VARCHAR NOT NULL,
    registered_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
    row_group_hashes VARCHAR[]
);
-- Workspaces made before row-group hashes gain the column (NULL: the next `init` hashes their shards).
ALTER TABLE shards ADD COLUMN IF NOT EXISTS row_group_hashes VARCHAR[];

-- One row per document: where it lives and how long its text is (UTF-8 bytes; 0 for null).
CREATE TABLE IF NOT EXISTS docs (
    doc_id     BIGINT NOT NULL,
    shard_id   INTEGER NOT NULL,
    row_idx    INTEGER NOT NULL,
    row_group  INTEGER NOT NULL,
    text_bytes INTEGER NOT NULL,
    text_null  BOOLEAN NOT NULL
);

CREATE TABLE IF NOT EXISTS agents (
    name       VARCHAR PRIMARY KEY,
    kind       VARCHAR NOT NULL,
    config     JSON NOT NULL,
    added_at   TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- Declared labels of each agent: label_id indexes agents' output, name is what users read.
CREATE TABLE IF NOT EXISTS agent_labels (
    agent    VARCHAR NOT NULL,
    label_id SMALLINT NOT NULL,
    name     VARCHAR NOT NULL
);

-- The manifest: one row per committed (agent, shard) part. A part counts only once it is here. `path` is
-- relative to the workspace for a part under it.
-- Times are the worker's wall seconds for this part: its equal share of the shard's read and decode (shared
-- by every agent scored in the same pass), its agent's own scoring and its write; `seconds` is their sum.
CREATE TABLE IF NOT EXISTS score_parts (
    agent        VARCHAR NOT NULL,
    shard_id     INTEGER NOT NULL,
    fingerprint  VARCHAR NOT NULL,
    path         VARCHAR NOT NULL,
    num_rows     BIGINT NOT NULL,
    complete     BOOLEAN NOT NULL,   -- false for --limit / --sample runs: rescored by the next full run
    seconds      DOUBLE NOT NULL,
    committed_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    read_s       DOUBLE,
    decode_s     DOUBLE,
    score_s      DOUBLE,
    write_s      DOUBLE,
    PRIMARY KEY (agent, shard_id)
);
-- Workspaces made before the per-stage times gain the columns (NULL for their parts) when they are opened.
ALTER TABLE score_parts ADD COLUMN IF NOT EXISTS read_s DOUBLE;
ALTER TABLE score_parts ADD COLUMN IF NOT EXISTS decode_s DOUBLE;
ALTER TABLE score_parts ADD COLUMN IF NOT EXISTS score_s DOUBLE;
ALTER TABLE score_parts ADD COLUMN IF NOT EXISTS write_s DOUBLE;

-- The last failure of a part that has not been committed since; cleared when it commits.
CREATE TABLE IF NOT EXISTS part_failures (
    agent     VARCHAR NOT NULL,
    shard_id  INTEGER NOT NULL,
    error     VARCHAR NOT NULL,
    failed_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (agent, shard_id)
);

-- Scores of committed parts: label indexes agent_labels (NULL = the agent could not label the document).
CREATE TABLE IF NOT EXISTS scores (
    agent  VARCHAR NOT NULL,
    doc_id BIGINT NOT NULL,
    label  SMALLINT,
    score  FLOAT
);

-- Cell statistics, kept up to date with every change of documents or scores (in the same transaction):
-- documents and estimated tokens (ceil(text_bytes / config.TOKEN_BYTES), at least 1) of every selectable
-- document (text not null or empty) per shard and label tuple. A label tuple is packed into one HUGEINT
-- `cell` = sum_A (label_A + 1) * stride_A over every registered agent (label_A = -1, packed 0, when the agent
-- has no label in range for the document, or no committed part of its shard). `cell_agents` holds the
-- strides: products of (num_labels + 1) over the agents before, in agent order (added_at, name), so a new
-- agent takes the next stride and leaves every packed cell as it is; a removed or replaced agent recounts.
CREATE TABLE IF NOT EXISTS cell_agents (
    agent      VARCHAR PRIMARY KEY,
    num_labels BIGINT NOT NULL,
    stride     HUGEINT NOT NULL
);
CREATE TABLE IF NOT EXISTS cell_stats (
    shard_id INTEGER NOT NULL,
    cell     HUGEINT NOT NULL,
    num_docs BIGINT NOT NULL,
    tokens   BIGINT NOT NULL
);
-- Every selectable document's packed label tuple (as `cell` above), with what a snapshot row and the token
-- estimate need; kept with `cell_stats` (its per-shard counts are derived from it in the same recount), in
-- doc_id order. The console's passes scan it instead of joining every agent's scores (DuckDB compresses
-- its sequential doc ids and few distinct cells to a few bytes a document).
CREATE TABLE IF NOT EXISTS doc_cells (
    doc_id     BIGINT NOT NULL,
    row_group  INTEGER NOT NULL,
    text_bytes INTEGER NOT NULL,
    cell       HUGEINT NOT NULL
);
