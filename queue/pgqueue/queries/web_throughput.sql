-- Finished jobs per minute over the last hour, with the mean run time (attempted → finished) and
-- mean queue wait (scheduled → attempted). Each finished state is read through its own partial
-- index on its finish time, so the cost follows the last hour's jobs, not the table's.
WITH finished AS (
    SELECT completed_at AS at, 'completed' AS outcome, attempted_at, scheduled_at
    FROM {jobs} WHERE state = 'completed' AND completed_at > now() - interval '1 hour'
    UNION ALL
    SELECT discarded_at, 'discarded', attempted_at, scheduled_at
    FROM {jobs} WHERE state = 'discarded' AND discarded_at > now() - interval '1 hour'
    UNION ALL
    SELECT cancelled_at, 'cancelled', attempted_at, scheduled_at
    FROM {jobs} WHERE state = 'cancelled' AND cancelled_at > now() - interval '1 hour'
)
SELECT date_trunc('minute', at) AS minute,
       count(*) FILTER (WHERE outcome = 'completed') AS completed,
       count(*) FILTER (WHERE outcome <> 'completed') AS failed,
       avg(extract(epoch FROM at - attempted_at)) AS run_seconds,
       avg(extract(epoch FROM attempted_at - scheduled_at)) AS wait_seconds
FROM finished
GROUP BY 1
ORDER BY 1
