-- The page before (newer than) the cursor for one state: read upwards, the caller reverses.
SELECT id, state::text, queue, worker, tags, attempt, max_attempts, priority,
       inserted_at, scheduled_at, attempted_at, completed_at, cancelled_at, discarded_at
FROM {jobs}
WHERE state = %(state)s::{job_state} AND ({where}) AND id > %(cursor)s
ORDER BY id
LIMIT %(limit)s
