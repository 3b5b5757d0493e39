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
-- rows another producer holds, so the UPDATE can never touch more rows than the LIMIT. The pick is
-- the function pgqueue_claim (migration 0007): it walks the fetch index in order under plan
-- settings that rule out a bitmap scan plus sort, the plan an unanalyzed table otherwise gets and
-- that reads the whole backlog for every claim.
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
{acks_part}
claimed AS (
    SELECT id FROM {claim}(%(queue)s::text, %(demand)s::integer) AS id
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
SELECT (SELECT landed FROM acks_landed) AS acked, f.*
FROM commit_mode
LEFT JOIN fetched AS f ON true
