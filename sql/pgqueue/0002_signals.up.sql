-- pgqueue 0002: queue control as rows. Pausing, resuming, scaling, starting and stopping queues,
-- and stopping cancelled jobs, are rows here; a notification on the schema's signal channel only
-- wakes the nodes to read them. Only a role that may insert here (the queue's own) can steer a node:
-- a role that can merely connect can send notifications, never commands.
-- Applied with search_path set to the target schema, so every name here lands in that schema.

CREATE TABLE pgqueue_signals (
    -- nodes apply rows in id order and remember the highest they applied: an old id sent again is
    -- ignored, and a node starts from the newest row there is when it boots
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action      text        NOT NULL,
    -- the queue it applies to ('*': every queue), NULL for pkill
    queue       text,
    -- the one node it applies to, NULL for every node
    node        text,
    -- limit and paused for scale and start, job_ids for pkill
    params      jsonb       NOT NULL DEFAULT '{}',
    inserted_at timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT pgqueue_signals_action CHECK (action IN ('pause', 'resume', 'scale', 'start', 'stop', 'pkill'))
);

COMMENT ON TABLE pgqueue_signals IS 'pgqueue queue control (managed by pgqueue migrations)';

-- Pruning old signals by age.
CREATE INDEX pgqueue_signals_inserted_idx ON pgqueue_signals (inserted_at);
