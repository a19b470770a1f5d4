-- Shadow runs (issue 18): what a shadow head answered beside the live one, and the registry's new
-- actions. Runs with search_path set to settings.pg_schema (see ops/postgres/migrations.py).

-- One row per shadow prediction (predictions.shadow), like inferences plus the live side of the
-- same phrase: the live version and label, and both heads' time per phrase in their batch.
-- A redelivered prediction is stored once (the primary key).
CREATE TABLE IF NOT EXISTS shadow_inferences (
    id               text             NOT NULL,
    region           text             NOT NULL,
    model            text             NOT NULL,
    model_version    text             NOT NULL,   -- the shadow's version
    label            text             NOT NULL,
    probability      double precision NOT NULL,
    top_k            jsonb            NOT NULL DEFAULT '[]'::jsonb,
    clean_text       text,
    embedder_version text,
    cache_hit        boolean,
    latency_ms       double precision,
    received_at      timestamptz,
    predicted_at     timestamptz      NOT NULL,
    live_version     text             NOT NULL,
    live_label       text,
    head_ms          double precision,
    live_head_ms     double precision,
    stored_at        timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT shadow_inferences_pkey PRIMARY KEY (id, model, model_version)
);

CREATE INDEX IF NOT EXISTS shadow_inferences_region_model_predicted_at_idx
    ON shadow_inferences (region, model, predicted_at);

-- The registry's history gains the shadow and review-rule changes: `promote --shadow` (action
-- shadow) and `review-rule` (action configure) keep the live version and record the new pointer's
-- shadow and review rule (NULL: none) beside it.
ALTER TABLE model_history DROP CONSTRAINT IF EXISTS model_history_action_check;
ALTER TABLE model_history ADD CONSTRAINT model_history_action_check
    CHECK (action IN ('activate', 'promote', 'rollback', 'retrain', 'shadow', 'configure'));
ALTER TABLE model_history ADD COLUMN IF NOT EXISTS shadow jsonb;
ALTER TABLE model_history ADD COLUMN IF NOT EXISTS review jsonb;
