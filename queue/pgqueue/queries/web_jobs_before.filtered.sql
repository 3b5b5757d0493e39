-- The dashboard's job list: one page of the matching jobs older than the cursor, newest first.
-- Keyset pagination (id below the last one shown), never OFFSET: a page costs the same at the
-- millionth row as at the first. With a state filter it reads jobs_state_id_idx backwards.
SELECT id, state::text, queue, worker, tags, attempt, max_attempts, priority,
       inserted_at, scheduled_at, attempted_at, completed_at, cancelled_at, discarded_at
FROM {jobs}
WHERE ({where}) AND id < %(cursor)s
ORDER BY id DESC
LIMIT %(limit)s
