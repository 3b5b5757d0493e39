-- Claim up to `demand` available jobs of one queue, highest priority first, then oldest.
-- The CTE is an optimisation fence: it picks and locks exactly the ids to claim, skipping rows
-- another producer holds, so the UPDATE can never touch more rows than the LIMIT.
WITH claimed AS (
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
