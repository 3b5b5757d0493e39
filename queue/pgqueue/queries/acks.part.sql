-- The acks half of every fetch (fetch_jobs.sql, fetch_limited.sql, fetch_partitioned.sql), included
-- where they write {{acks_part}}: the CTEs `acks` (the batch) and `acked` (the ids that passed the fence).
-- See fetch_jobs.sql for the shape of the batch and why the fence looks as it does.
acks AS (
    SELECT *
    FROM json_to_recordset(%(acks)s::json)
        AS a(id bigint, attempt integer, state text, delay float8, error text, meta jsonb)
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
                    ELSE j.meta || a.meta END
    FROM acks AS a
    -- The fence; re-checked against the newest row version if a concurrent commit changed it.
    -- `state::text` keeps the planner on the primary key: offered `state = 'executing'`, it reads
    -- the executing index instead, walking an entry for every job claimed since the last vacuum.
    WHERE j.id = a.id AND j.state::text = 'executing' AND j.attempt = a.attempt
    RETURNING j.id
),
