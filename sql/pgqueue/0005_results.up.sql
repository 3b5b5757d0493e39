-- pgqueue 0005: what a worker returned, and batches of jobs with callbacks.
-- Applied with search_path set to the target schema, so every name here lands in that schema.

-- NULL until a job completes with a value (and for every job whose worker returns None), so the
-- column costs nothing on the hot path of jobs without results.
ALTER TABLE jobs ADD COLUMN result jsonb;

COMMENT ON COLUMN jobs.result IS 'the JSON value the worker returned (pgqueue results)';

-- Set by pgqueue.wait on a job that has not finished yet: the acks that finish an awaited job send
-- a wake-up, and those of jobs nobody awaits send none (a NOTIFY serialises committing
-- transactions). Written on the job row itself, so the row lock orders it against the ack: an
-- ack either sees it (and notifies) or finished the job before (and the waiter reads that).
ALTER TABLE jobs ADD COLUMN awaited boolean;

-- A batch: a group of jobs whose finishing is counted in the ack statement that finishes them
-- (acks.part.sql), so the callbacks are decided in the same transaction as the last ack, under the
-- batch row's lock: exactly once, whatever runs concurrently or is killed.
CREATE TABLE pgqueue_batches (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- members inserted so far; the counters below count members that reached each final state
    total         integer     NOT NULL DEFAULT 0,
    completed     integer     NOT NULL DEFAULT 0,
    discarded     integer     NOT NULL DEFAULT 0,
    cancelled     integer     NOT NULL DEFAULT 0,
    -- callback jobs as {worker, queue, args, meta, tags, priority, max_attempts}, or NULL
    on_completed  jsonb,
    on_discarded  jsonb,
    on_finished   jsonb,
    meta          jsonb       NOT NULL DEFAULT '{}',
    inserted_at   timestamptz NOT NULL DEFAULT now(),
    -- set by the ack that finished the last member; a finished batch takes no more members
    finished_at   timestamptz,

    CONSTRAINT pgqueue_batches_counts CHECK (total >= 0 AND completed >= 0 AND discarded >= 0
                                             AND cancelled >= 0)
);

-- Finished batches are pruned with their jobs (see prune_jobs.sql).
CREATE INDEX pgqueue_batches_finished_idx ON pgqueue_batches (finished_at) WHERE finished_at IS NOT NULL;

-- Which batch a job belongs to. No foreign key: the pruner deletes jobs and batches separately,
-- and a key would make every ack check the batch table.
ALTER TABLE jobs ADD COLUMN batch_id bigint;

CREATE INDEX jobs_batch_idx ON jobs (batch_id) WHERE batch_id IS NOT NULL;
