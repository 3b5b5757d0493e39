-- Chimeway 0005: multi-step journeys and versioned rendering.
-- Applied with search_path set to the target schema.
--
-- A journey is declared by a notifier (chimeway.journeys.Journey) and stored once per key and
-- version, so a run advances from rows alone: the worker never needs the notifier's code. A run per
-- notification walks the steps in order; every move is appended to the transition log. Each step
-- is emitted as an ordinary delivery (one per notification and channel: the planner's key), and
-- each wait is a scheduled pgqueue job, never a poller over runs.

CREATE TABLE chimeway_journey_definitions (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    journey_key      text        NOT NULL,
    journey_version  integer     NOT NULL,
    notification_key text        NOT NULL,
    -- the validated steps, in order: [{order, key, channel, delay, wait_until, when, after, template}]
    steps            jsonb       NOT NULL,
    -- application events that end a run, or end the wait of its current step
    end_on           text[]      NOT NULL DEFAULT '{}',
    advance_on       text[]      NOT NULL DEFAULT '{}',
    stop_when_read   boolean     NOT NULL DEFAULT true,
    inserted_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT chimeway_journey_definitions_key_version_unique UNIQUE (journey_key, journey_version),
    CONSTRAINT chimeway_journey_definitions_version_positive CHECK (journey_version > 0),
    CONSTRAINT chimeway_journey_definitions_key_not_blank CHECK (btrim(journey_key) <> ''),
    CONSTRAINT chimeway_journey_definitions_steps_array CHECK (jsonb_typeof(steps) = 'array')
);

-- One run per notification. state: waiting (the current step's wait is scheduled), sending (its
-- delivery is out, its outcome awaited), completed (every step taken or skipped), ended (stopped
-- early: read, a signal, a step that could not be emitted).
CREATE TABLE chimeway_journey_runs (
    id                 uuid        PRIMARY KEY,
    notification_id    uuid        NOT NULL REFERENCES chimeway_notifications (id) ON DELETE CASCADE,
    definition_id      uuid        NOT NULL REFERENCES chimeway_journey_definitions (id),
    recipient_identity text        NOT NULL,
    state              text        NOT NULL DEFAULT 'waiting',
    current_step       integer     NOT NULL,
    due_at             timestamptz,
    -- step order (as text) → that step's outcome: delivered, suppressed, skipped, …
    outcomes           jsonb       NOT NULL DEFAULT '{}',
    terminal_reason    text,
    started_at         timestamptz NOT NULL DEFAULT now(),
    last_transition_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT chimeway_journey_runs_notification_unique UNIQUE (notification_id),
    CONSTRAINT chimeway_journey_runs_state_known CHECK (state IN ('waiting', 'sending', 'completed', 'ended')),
    CONSTRAINT chimeway_journey_runs_reason_only_when_ended CHECK (
        terminal_reason IS NULL OR state IN ('completed', 'ended')
    )
) WITH (fillfactor = 80);

-- Signals find a recipient's runs that are still going.
CREATE INDEX chimeway_journey_runs_active_idx ON chimeway_journey_runs (recipient_identity)
    WHERE state IN ('waiting', 'sending');

-- Append-only: one row per move of a run. Never updated.
CREATE TABLE chimeway_journey_transitions (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      uuid        NOT NULL REFERENCES chimeway_journey_runs (id) ON DELETE CASCADE,
    step        integer,
    delivery_id uuid,
    from_state  text,
    to_state    text        NOT NULL,
    reason      text        NOT NULL,
    context     jsonb       NOT NULL DEFAULT '{}',
    inserted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX chimeway_journey_transitions_run_idx ON chimeway_journey_transitions (run_id, id);

-- Rendering: the template a delivery is rendered with and the data it is rendered from, fixed
-- when the delivery is planned, so a retry renders exactly what the first attempt did.
ALTER TABLE chimeway_deliveries
    ADD COLUMN render_key     text,
    ADD COLUMN render_version integer,
    ADD COLUMN render_data    jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN journey_run_id uuid REFERENCES chimeway_journey_runs (id) ON DELETE SET NULL,
    ADD COLUMN journey_step   integer,
    ADD CONSTRAINT chimeway_deliveries_render_version_positive CHECK (render_version > 0),
    ADD CONSTRAINT chimeway_deliveries_render_pair CHECK ((render_key IS NULL) = (render_version IS NULL)),
    ADD CONSTRAINT chimeway_deliveries_render_data_object CHECK (jsonb_typeof(render_data) = 'object');

CREATE INDEX chimeway_deliveries_journey_run_idx ON chimeway_deliveries (journey_run_id)
    WHERE journey_run_id IS NOT NULL;
