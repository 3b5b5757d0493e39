-- The producer's one round trip: record finished attempts, then claim up to `demand` available
-- jobs of `queue`. A queue of short jobs costs one statement per batch, acks included. The
-- completer and the testing helpers run it with demand 0 (ack only), a producer with no acks
-- waiting runs it with an empty list (fetch only).
--
-- Acks arrive as one JSON array of objects with keys id, attempt, state, delay, error, meta,
-- encoded in C by orjson (psycopg dumps six parallel arrays in Python: a tenth of a worker's CPU).
-- They are fenced: an ack lands only while its job is still `executing` that same attempt, so a
-- job that was rescued, cancelled or fetched again meanwhile can't be overwritten by a worker that
-- lost it. Snoozes roll the attempt back and count themselves in meta.snoozed.
--
-- The claim's CTE is an optimisation fence: it picks and locks exactly the ids to claim, skipping
-- rows another producer holds, so the UPDATE can never touch more rows than the LIMIT.
--
-- With async_commit (the runtime's default, see Runtime's synchronous_acks) the transaction's
-- commit doesn't wait for its WAL flush. Claims and acks are then the only writes a PostgreSQL
-- crash may lose, and losing one re-runs a job, as a worker crash does; no job is ever lost, as
-- inserts commit in the application's own transactions, at its own durability.
--
-- Always at least one row comes back: the first column is how many acks landed (the rest were
-- fenced out); the job columns follow, NULL in the one row when nothing was claimed.
WITH commit_mode AS (
    SELECT CASE WHEN %(async_commit)s THEN set_config('synchronous_commit', 'off', true) END AS setting
),
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
claimed AS (
    SELECT id
    FROM {jobs}
    WHERE state = 'available' AND queue = %(queue)s
    ORDER BY priority, scheduled_at, id
    LIMIT %(demand)s
    FOR UPDATE SKIP LOCKED
),
fetched AS (
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
)
SELECT (SELECT count(*) FROM acked) AS acked, f.*
FROM commit_mode
LEFT JOIN fetched AS f ON true
