-- Everything the metrics scrape reads from the jobs table, in one statement and one snapshot:
-- rows of (kind, queue, label, value):
--   'jobs'      queue, state, count (a NULL queue: an estimate for a state beyond its bound, see
--               state_counts.part.sql);
--   'executing' queue, node, count (the small partial index on executing jobs);
--   'oldest'    queue, NULL, seconds the oldest available job has been due. Found by a loose scan
--               of the fetch index: each queue with jobs waiting, then per priority its first job,
--               so the cost follows queues x priorities, not the backlog.
WITH RECURSIVE {state_counts_part},
waiting_queues(queue) AS (
    (SELECT j.queue FROM {jobs} AS j WHERE j.state = 'available' ORDER BY j.queue LIMIT 1)
    UNION ALL
    SELECT (SELECT j.queue FROM {jobs} AS j
            WHERE j.state = 'available' AND j.queue > w.queue
            ORDER BY j.queue LIMIT 1)
    FROM waiting_queues AS w
    WHERE w.queue IS NOT NULL
)
SELECT 'jobs' AS kind, queue, state AS label, n::float8 AS value FROM state_counts
UNION ALL
SELECT 'executing', queue, coalesce(attempted_by[1], '?'), count(*)::float8
FROM {jobs}
WHERE state = 'executing'
GROUP BY 2, 3
UNION ALL
SELECT 'oldest', w.queue, NULL,
       extract(epoch FROM now() - (
           SELECT min(f.scheduled_at)
           FROM generate_series(0, 9) AS p(priority)
           CROSS JOIN LATERAL (
               SELECT j.scheduled_at FROM {jobs} AS j
               WHERE j.state = 'available' AND j.queue = w.queue AND j.priority = p.priority
               ORDER BY j.scheduled_at
               LIMIT 1
           ) AS f
       ))::float8
FROM waiting_queues AS w
WHERE w.queue IS NOT NULL
