-- The review page (`phrasestream review`, streams/review/): the items routed to a human, the
-- reviewers' answers, and the label sets (renames and merges applied when `retrain` replays).
-- Runs with search_path set to settings.pg_schema (see ops/postgres/migrations.py).

-- One row per ReviewItem read from phrases.review: a redelivered item is stored once.
CREATE TABLE IF NOT EXISTS review_items (
    item_id         text             PRIMARY KEY,
    phrase_id       text             NOT NULL,
    region          text             NOT NULL,
    model           text             NOT NULL,
    model_version   text             NOT NULL,
    clean_text      text             NOT NULL,
    label           text             NOT NULL,       -- the model's suggestion
    probability     double precision NOT NULL,
    top_k           jsonb            NOT NULL DEFAULT '[]'::jsonb,
    margin          double precision NOT NULL,
    reasons         text[]           NOT NULL,
    random_slice    boolean          NOT NULL DEFAULT false,
    random_rate     double precision NOT NULL,
    sampling_weight double precision,
    evidence        jsonb,
    shadow_version  text,
    shadow_label    text,
    double_review   boolean          NOT NULL DEFAULT false,  -- shown to two reviewers
    predicted_at    timestamptz      NOT NULL,
    stored_at       timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS review_items_head_margin_idx ON review_items (region, model, margin);
CREATE INDEX IF NOT EXISTS review_items_stored_at_idx ON review_items (stored_at);

-- One answer per (item, reviewer); answering again updates it. outcome 'label' carries a label.
CREATE TABLE IF NOT EXISTS review_answers (
    item_id           text        NOT NULL REFERENCES review_items (item_id) ON DELETE CASCADE,
    reviewer          text        NOT NULL,
    outcome           text        NOT NULL CHECK (outcome IN ('label', 'skip', 'unsure', 'out_of_scope')),
    label             text,
    label_set_version integer     NOT NULL DEFAULT 0,
    answered_at       timestamptz NOT NULL DEFAULT now(),
    first_answered_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT review_answers_pkey PRIMARY KEY (item_id, reviewer),
    CONSTRAINT review_answers_label_check CHECK ((outcome = 'label') = (label IS NOT NULL AND label <> ''))
);
CREATE INDEX IF NOT EXISTS review_answers_answered_at_idx ON review_answers (answered_at);

-- Label set version n of a head: the renames given at n and the whole map composed with
-- versions 1..n-1 (old label -> label of version n). Version 0 (no row) is the identity.
CREATE TABLE IF NOT EXISTS label_sets (
    region     text        NOT NULL,
    model      text        NOT NULL,
    version    integer     NOT NULL CHECK (version >= 1),
    renames    jsonb       NOT NULL,
    mapping    jsonb       NOT NULL,
    actor      text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT label_sets_pkey PRIMARY KEY (region, model, version)
);
