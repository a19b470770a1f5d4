-- What the workers served, summed per (region, model, model_version, UTC hour): the part of a
-- drift report that the inferences table cannot give (no embedding is stored per row). The
-- sink inserts every delta of the topic serving.rollups (see streams/rollups.py) once.
-- Runs with search_path set to settings.pg_schema (see ops/services.py apply_migrations).

CREATE TABLE IF NOT EXISTS serving_rollups (
    delta_id       text PRIMARY KEY,      -- '<worker instance uuid>-<seq>': a redelivered delta is stored once
    region         text NOT NULL,
    model          text NOT NULL,
    model_version  text NOT NULL,
    hour           timestamptz NOT NULL,  -- date_trunc('hour', predicted_at) in UTC
    n              bigint NOT NULL,       -- phrases counted in this delta
    embedding_sum  double precision[] NOT NULL, -- element-wise sum of the L2-normalised sentence embeddings
                                          --   (the 384-d `mean6` readout block, exactly what
                                          --   retrain/reference.py's embedding_centroid averages)
    unk_rate_sum   double precision NOT NULL,   -- sum over phrases of their unknown-word-piece rate
    with_unk       bigint NOT NULL,             -- phrases with at least one unknown word piece
    stored_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS serving_rollups_region_model_hour_idx ON serving_rollups (region, model, hour);
