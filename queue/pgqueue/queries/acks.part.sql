-- The acks half of every fetch (fetch_jobs.sql, fetch_limited.sql, fetch_partitioned.sql), included
-- where they write {{acks_part}}: the CTEs `acks` (the batch), `acked` (the ids that passed the fence)
-- and `acks_landed` (how many did, once the results wake-up is sent). Each statement comes in two
-- renderings (see store.py): as named, and `<name>_batched` with the batches' accounting
-- (batch_acks.part.sql) where this file writes {{acks_batches_part}}; acks of batch members go
-- out in the second, so acks of other jobs don't pay for batches.
-- See fetch_jobs.sql for the shape of the batch and why the fence looks as it does.
acks AS (
    SELECT *
    FROM json_to_recordset(%(acks)s::json)
        AS a(id bigint, attempt integer, state text, delay float8, error text, meta jsonb, result jsonb)
),
acked AS (
    UPDATE {jobs} AS j
    SET state = a.state::{job_state},
        completed_at = CASE WHEN a.state = 'completed' THEN now() ELSE j.completed_at END,
        cancelled_at = CASE WHEN a.state = 'cancelled' THEN now() ELSE j.cancelled_at END,
        discarded_at = CASE WHEN a.state = 'discarded' THEN now() ELSE j.discarded_at END,
        scheduled_at = CASE WHEN a.state IN ('retryable', 'scheduled')
                            THEN now() + make_interval(secs => coalesce(a.delay, 0))
                            ELSE j.scheduled_at END,
        attempt = CASE WHEN a.state = 'scheduled' THEN j.attempt - 1 ELSE j.attempt END,
        errors = CASE WHEN a.error IS NULL THEN j.errors
                      ELSE j.errors || jsonb_build_array(jsonb_build_object(
                          'attempt', j.attempt, 'at', now(), 'error', a.error)) END,
        -- Guarded like the lifeline's rescue: a hand-written meta that is not an object, or a
        -- snoozed count that is not a number, must not fail the statement (and with it every ack
        -- in the batch and the fetch).
        meta = CASE WHEN a.state = 'scheduled' AND jsonb_typeof(j.meta) = 'object'
                    THEN jsonb_set(j.meta || coalesce(a.meta, jsonb_build_object()), ARRAY['snoozed'],
                                   to_jsonb(CASE WHEN jsonb_typeof(j.meta -> 'snoozed') = 'number'
                                                 THEN floor((j.meta ->> 'snoozed')::numeric) ELSE 0 END + 1))
                    WHEN a.state = 'scheduled' OR a.meta IS NULL THEN j.meta
                    ELSE j.meta || a.meta END,
        result = coalesce(a.result, j.result)
    FROM acks AS a
    -- The fence; re-checked against the newest row version if a concurrent commit changed it.
    -- `state::text` keeps the planner on the primary key: offered `state = 'executing'`, it reads
    -- the executing index instead, walking an entry for every job claimed since the last vacuum.
    WHERE j.id = a.id AND j.state::text = 'executing' AND j.attempt = a.attempt
    RETURNING j.id, j.state, j.batch_id, j.awaited
),
{acks_batches_part}
-- One wake-up per statement for `pgqueue.wait`, and only when it finished a job someone awaits
-- (jobs.awaited): the ids when they fit in a notification, else none (every waiter re-reads its
-- job). Only a wake-up: waiters read the row.
acks_landed AS (
    SELECT count(*) AS landed,
           CASE WHEN count(*) FILTER (WHERE awaited AND state::text IN ('completed', 'discarded', 'cancelled')) > 0
                THEN pg_notify({results_channel}, CASE
                    WHEN count(*) FILTER (WHERE awaited) <= 300
                    THEN json_build_object('ids', array_agg(id) FILTER (
                        WHERE awaited AND state::text IN ('completed', 'discarded', 'cancelled')))::text
                    ELSE '{{}}' END) END AS woken
    FROM acked
),
