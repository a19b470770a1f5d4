-- One row per prediction written by the PostgreSQL sink.
-- Runs with search_path set to settings.pg_schema (see ops/services.py apply_migrations):
-- do not qualify names with a schema here.

CREATE TABLE IF NOT EXISTS inferences (
    id               text             NOT NULL,
    region           text             NOT NULL,
    model            text             NOT NULL,
    model_version    text             NOT NULL,
    label            text             NOT NULL,
    probability      double precision NOT NULL,
    top_k            jsonb            NOT NULL DEFAULT '[]'::jsonb,
    clean_text       text,
    embedder_version text,
    cache_hit        boolean,
    latency_ms       double precision,
    received_at      timestamptz,
    predicted_at     timestamptz      NOT NULL,
    stored_at        timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT inferences_pkey PRIMARY KEY (id, model, model_version)
);

CREATE INDEX IF NOT EXISTS inferences_region_model_predicted_at_idx
    ON inferences (region, model, predicted_at);

CREATE INDEX IF NOT EXISTS inferences_label_idx
    ON inferences (label);
