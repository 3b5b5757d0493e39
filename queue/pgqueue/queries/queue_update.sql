-- Replace a declared queue's settings (the caller merged and validated them under queue_get's lock).
UPDATE {queues}
SET local_limit = %(limit)s,
    global_limit = %(global_limit)s,
    rate_limit = %(rate_limit)s,
    rate_period = %(rate_period)s,
    partitioned = %(partitioned)s,
    paused = %(paused)s,
    updated_at = now()
WHERE name = %(name)s
RETURNING name
