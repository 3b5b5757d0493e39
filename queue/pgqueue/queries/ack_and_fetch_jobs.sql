-- The producer's round trip: record finished attempts (as ack_jobs does, fenced the same way) and
-- claim up to `demand` available jobs of `queue` (as fetch_jobs does), in one statement. A queue
-- of short jobs then costs one round trip per batch instead of two.
WITH acks AS (
    SELECT *
    FROM unnest(
        %(id)s::bigint[], %(attempt)s::integer[], %(state)s::text[], %(delay)s::float8[],
        %(error)s::text[], %(meta)s::jsonb[]
    ) AS a(id, attempt, state, delay, error, meta)
),
acked AS (
    UPDATE {jobs} AS j
    SET state = a.state::{job_state},
        completed_at = CASE WHEN a.state = 'completed' THEN now() ELSE j.completed_at END,
        cancelled_at = CASE WHEN a.state = 'cancelled' THEN now() ELSE j.cancelled_at END,
        discarded_at = CASE WHEN a.state = 'discarded' THEN now() ELSE j.discarded_at END,
        scheduled_at = CASE WHEN a.state IN ('retryable', 'scheduled')
                            THEN now() + make_interval(secs => a.delay) ELSE j.scheduled_at END,
        attempt = CASE WHEN a.state = 'scheduled' THEN j.attempt - 1 ELSE j.attempt END,
        errors = CASE WHEN a.error IS NULL THEN j.errors
                      ELSE j.errors || jsonb_build_array(jsonb_build_object(
                          'attempt', j.attempt, 'at', now(), 'error', a.error)) END,
        -- Guarded as in ack_jobs: a hand-written meta that is not an object, or a snoozed count
        -- that is not a number, must not fail the statement (and with it the acks and the fetch).
        meta = CASE WHEN a.state = 'scheduled' AND jsonb_typeof(j.meta) = 'object'
                    THEN jsonb_set(j.meta || coalesce(a.meta, jsonb_build_object()), ARRAY['snoozed'],
                                   to_jsonb(CASE WHEN jsonb_typeof(j.meta -> 'snoozed') = 'number'
                                                 THEN floor((j.meta ->> 'snoozed')::numeric) ELSE 0 END + 1))
                    WHEN a.state = 'scheduled' OR a.meta IS NULL THEN j.meta
                    ELSE j.meta || a.meta END
    FROM acks AS a
    -- the fence; re-checked against the newest row version if a concurrent commit changed it
    WHERE j.id = a.id AND j.state = 'executing' AND j.attempt = a.attempt
    RETURNING j.id
),
claimed AS (
    SELECT id
    FROM {jobs}
    WHERE state = 'available' AND queue = %(queue)s
    ORDER BY priority, scheduled_at, id
    LIMIT %(demand)s
    FOR UPDATE SKIP LOCKED
)
UPDATE {jobs} AS j
SET state = 'executing',
    attempt = j.attempt + 1,
    attempted_at = now(),
    attempted_by = ARRAY[%(node)s::text, %(producer)s::text]
FROM claimed
WHERE j.id = claimed.id
RETURNING j.id, j.state, j.queue, j.worker, j.args, j.meta, j.tags, j.errors, j.attempt,
          j.max_attempts, j.priority, j.inserted_at, j.scheduled_at, j.attempted_at,
          j.attempted_by, j.completed_at, j.cancelled_at, j.discarded_at
