-- Read the matching jobs, newest first.
SELECT id, state, queue, worker, args, meta, tags, errors, attempt, max_attempts, priority,
       inserted_at, scheduled_at, attempted_at, attempted_by, completed_at, cancelled_at,
       discarded_at
FROM {jobs}
WHERE ({where})
ORDER BY id DESC
LIMIT %(limit)s
