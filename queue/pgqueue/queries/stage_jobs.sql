-- Make due scheduled and retryable jobs available (oldest first, at most `limit`), and wake
-- each queue that received one. `queue` narrows it to one queue (NULL: every queue);
-- `until` stages jobs due by then instead of by now(). The pick is pgqueue_due (migration 0007):
-- the staging index walked in order, whatever the planner's statistics say.
WITH due AS (
    SELECT id FROM {due}(%(until)s::timestamptz, %(queue)s::text, %(limit)s::integer) AS id
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
