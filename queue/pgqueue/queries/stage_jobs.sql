-- Make due scheduled and retryable jobs available (oldest first, at most `limit`), and wake
-- each queue that received one. `queue` narrows it to one queue (NULL: every queue);
-- `until` stages jobs due by then instead of by now().
WITH due AS (
    SELECT j.id
    FROM {jobs} AS j
    WHERE j.state IN ('scheduled', 'retryable')
      AND j.scheduled_at <= coalesce(%(until)s::timestamptz, now())
      AND (%(queue)s::text IS NULL OR j.queue = %(queue)s::text)
    ORDER BY j.scheduled_at, j.id
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
),
staged AS (
    UPDATE {jobs} AS j
    SET state = 'available'
    FROM due
    WHERE j.id = due.id
    RETURNING j.id, j.queue
),
woken AS (
    SELECT count(pg_notify(%(channel)s, json_build_object('queue', q.queue)::text)) AS n
    FROM (SELECT DISTINCT queue FROM staged WHERE %(notify)s) AS q
)
SELECT staged.id, staged.queue FROM staged, woken
