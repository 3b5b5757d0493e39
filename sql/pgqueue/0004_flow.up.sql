-- pgqueue 0004: flow control and live configuration. Queues and cron entries declared as rows,
-- the state the fetch keeps for rate limits, and the index that keeps partitioned fetches fair.
-- Applied with search_path set to the target schema, so every name here lands in that schema.

-- Queues declared in the database. A node started without a queue list runs these; a change here
-- reaches running nodes through a 'configure' signal (the row is the truth, the signal only says
-- which queue to re-read).
CREATE TABLE pgqueue_queues (
    name          text        PRIMARY KEY,
    -- concurrency on each node
    local_limit   integer     NOT NULL,
    -- jobs executing at once across every node (per partition when partitioned)
    global_limit  integer,
    -- jobs (weighted) started per rate_period seconds across every node (per partition)
    rate_limit    integer,
    rate_period   double precision,
    -- limits apply per partition key (a job's meta.partition_key) instead of per queue
    partitioned   boolean     NOT NULL DEFAULT false,
    paused        boolean     NOT NULL DEFAULT false,
    inserted_at   timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT pgqueue_queues_name CHECK (char_length(name) BETWEEN 1 AND 128),
    CONSTRAINT pgqueue_queues_local_limit CHECK (local_limit BETWEEN 1 AND 10000),
    CONSTRAINT pgqueue_queues_global_limit CHECK (global_limit > 0),
    CONSTRAINT pgqueue_queues_rate_limit CHECK (rate_limit > 0),
    CONSTRAINT pgqueue_queues_rate_period CHECK (rate_period > 0 AND rate_period <= 86400),
    CONSTRAINT pgqueue_queues_rate_complete CHECK ((rate_limit IS NULL) = (rate_period IS NULL))
);

COMMENT ON TABLE pgqueue_queues IS 'pgqueue queues (managed by pgqueue migrations)';

-- One row per limited queue (partition_key '') and per partition of a partitioned one. The fetch
-- of a limited queue locks the queue's row first, so admissions to one queue are serialized
-- across nodes; the rate-limit window lives here as (slot, units) pairs of the last period.
CREATE TABLE pgqueue_limit_state (
    queue         text        NOT NULL,
    partition_key text        NOT NULL,
    -- the latest admission time: admissions only move forward, whatever the nodes' clocks
    last_start    timestamptz NOT NULL DEFAULT '-infinity',
    slots         bigint[]    NOT NULL DEFAULT '{}',
    units         integer[]   NOT NULL DEFAULT '{}',
    PRIMARY KEY (queue, partition_key)
) WITH (fillfactor = 50);

-- Cron entries declared in the database, inserted by the leader's cron plugin once per slot.
CREATE TABLE pgqueue_cron (
    name          text        PRIMARY KEY,
    expression    text        NOT NULL,
    timezone      text        NOT NULL DEFAULT 'UTC',
    worker        text        NOT NULL,
    args          jsonb       NOT NULL DEFAULT '{}',
    queue         text,
    priority      smallint,
    max_attempts  integer,
    enabled       boolean     NOT NULL DEFAULT true,
    inserted_at   timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT pgqueue_cron_name CHECK (char_length(name) BETWEEN 1 AND 128),
    CONSTRAINT pgqueue_cron_worker CHECK (char_length(worker) BETWEEN 1 AND 255),
    CONSTRAINT pgqueue_cron_args_object CHECK (jsonb_typeof(args) = 'object')
);

COMMENT ON TABLE pgqueue_cron IS 'pgqueue cron entries (managed by pgqueue migrations)';

-- Partitioned fetches walk the distinct partitions of a queue through this index (a loose index
-- scan), so a partition with 10 jobs waiting is found as fast as one with 100,000. Partial: only
-- jobs that carry a partition key pay for it.
CREATE INDEX jobs_partition_idx ON jobs (queue, (meta ->> 'partition_key'), priority, scheduled_at, id)
    WHERE state = 'available' AND meta ? 'partition_key';

-- A queue's settings changed in pgqueue_queues: nodes re-read that queue's row.
ALTER TABLE pgqueue_signals DROP CONSTRAINT pgqueue_signals_action;
ALTER TABLE pgqueue_signals ADD CONSTRAINT pgqueue_signals_action
    CHECK (action IN ('pause', 'resume', 'scale', 'start', 'stop', 'pkill', 'configure'));
