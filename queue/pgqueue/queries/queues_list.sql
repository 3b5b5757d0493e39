-- The queues declared in the database, by name (see queues.py for their meaning).
SELECT name, local_limit, global_limit, rate_limit, rate_period, partitioned, paused, updated_at
FROM {queues}
ORDER BY name
