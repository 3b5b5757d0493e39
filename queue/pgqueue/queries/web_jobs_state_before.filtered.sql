-- The dashboard's job list for one state: one page of the matching jobs older than the cursor,
-- newest first. Keyset pagination (id below the last one shown), never OFFSET: with the state an
-- equality on jobs_state_id_idx, a page reads that index backwards from the cursor and costs the
-- same at the millionth row as at the first. Other filters ({where}) apply on top.
SELECT id, state::text, queue, worker, tags, attempt, max_attempts, priority,
       inserted_at, scheduled_at, attempted_at, completed_at, cancelled_at, discarded_at
FROM {jobs}
WHERE state = %(state)s::{job_state} AND ({where}) AND id < %(cursor)s
ORDER BY id DESC
LIMIT %(limit)s
