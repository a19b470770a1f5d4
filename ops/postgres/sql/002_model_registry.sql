-- The head registry's PostgreSQL side: every version's artifact bundle, and the history of
-- which version was live when. (The live pointer itself is the compacted Kafka topic
-- models.registry; see models/pointers.py.) Runs with search_path set to settings.pg_schema.

-- One row per head version: its files as one tar (see models/bundles.py), checked by sha256.
CREATE TABLE IF NOT EXISTS model_bundles (
    region           text        NOT NULL,
    model            text        NOT NULL,
    version          text        NOT NULL,
    sha256           text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes       bigint      NOT NULL CHECK (size_bytes > 0),
    embedder_version text,
    metadata         jsonb       NOT NULL,
    created_at       timestamptz,
    stored_at        timestamptz NOT NULL DEFAULT now(),
    bundle           bytea       NOT NULL,
    CONSTRAINT model_bundles_pkey PRIMARY KEY (region, model, version)
);
-- The files are mostly compressed or float weights already: store them out of line, uncompressed.
ALTER TABLE model_bundles ALTER COLUMN bundle SET STORAGE EXTERNAL;

-- One row per change of the live version: what, when, from which version, why, with the
-- new version's metrics at the time. "What was live at T" is the newest row at or before T.
CREATE TABLE IF NOT EXISTS model_history (
    id           bigserial   PRIMARY KEY,
    at           timestamptz NOT NULL,
    region       text        NOT NULL,
    model        text        NOT NULL,
    version      text        NOT NULL,
    action       text        NOT NULL CHECK (action IN ('activate', 'promote', 'rollback', 'retrain')),
    from_version text,
    reason       text,
    metrics      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    seq          integer     NOT NULL,
    actor        text,
    host         text
);

CREATE INDEX IF NOT EXISTS model_history_region_model_at_idx ON model_history (region, model, at);
