-- Every producer row with its heartbeat age, newest heartbeat first (the nodes page shows stale
-- ones too, marked, until the lifeline prunes them).
SELECT uuid, node, queue, meta, started_at, updated_at,
       extract(epoch FROM now() - updated_at) AS age_seconds
FROM {producers}
ORDER BY node, queue
LIMIT 500
