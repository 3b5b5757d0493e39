-- Record the outcome of many finished attempts in one statement.
-- Fenced: an ack lands only while the job is still `executing` the same attempt, so a job that
-- was rescued, cancelled or re-fetched meanwhile can't be overwritten by a worker that lost it.
-- Snoozes roll the attempt back and count themselves in meta.snoozed.
WITH acks AS (
    SELECT *
    FROM unnest(
        %(id)s::bigint[], %(attempt)s::integer[], %(state)s::text[], %(delay)s::float8[],
        %(error)s::text[], %(meta)s::jsonb[]
    ) AS a(id, attempt, state, delay, error, meta)
),
target AS (
    SELECT j.id, a.attempt, a.state::{job_state} AS new_state, a.delay, a.error, a.meta
    FROM acks AS a
    JOIN {jobs} AS j ON j.id = a.id
    WHERE j.state = 'executing' AND j.attempt = a.attempt
)
UPDATE {jobs} AS j
SET state = t.new_state,
    completed_at = CASE WHEN t.new_state = 'completed' THEN now() ELSE j.completed_at END,
    cancelled_at = CASE WHEN t.new_state = 'cancelled' THEN now() ELSE j.cancelled_at END,
    discarded_at = CASE WHEN t.new_state = 'discarded' THEN now() ELSE j.discarded_at END,
    scheduled_at = CASE WHEN t.new_state IN ('retryable', 'scheduled')
                        THEN now() + make_interval(secs => t.delay) ELSE j.scheduled_at END,
    attempt = CASE WHEN t.new_state = 'scheduled' THEN j.attempt - 1 ELSE j.attempt END,
    errors = CASE WHEN t.error IS NULL THEN j.errors
                  ELSE j.errors || jsonb_build_array(jsonb_build_object(
                      'attempt', j.attempt, 'at', now(), 'error', t.error)) END,
    -- Guarded like the lifeline's rescue: a hand-written meta that is not an object, or a snoozed
    -- count that is not a number, must not fail the statement and with it every ack in the batch.
    meta = CASE WHEN t.new_state = 'scheduled' AND jsonb_typeof(j.meta) = 'object'
                THEN jsonb_set(j.meta || coalesce(t.meta, jsonb_build_object()), ARRAY['snoozed'],
                               to_jsonb(CASE WHEN jsonb_typeof(j.meta -> 'snoozed') = 'number'
                                             THEN floor((j.meta ->> 'snoozed')::numeric) ELSE 0 END + 1))
                WHEN t.new_state = 'scheduled' OR t.meta IS NULL THEN j.meta
                ELSE j.meta || t.meta END
FROM target AS t
-- repeated here because a row changed by a concurrent commit is re-checked against this WHERE only
WHERE j.id = t.id AND j.state = 'executing' AND j.attempt = t.attempt
RETURNING j.id
