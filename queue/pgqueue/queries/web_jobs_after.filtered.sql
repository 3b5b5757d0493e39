-- The page before (newer than) the cursor: read upwards from it, the caller reverses the rows.
SELECT id, state::text, queue, worker, tags, attempt, max_attempts, priority,
       inserted_at, scheduled_at, attempted_at, completed_at, cancelled_at, discarded_at
FROM {jobs}
WHERE ({where}) AND id > %(cursor)s
ORDER BY id ASC
LIMIT %(limit)s
