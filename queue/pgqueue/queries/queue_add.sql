-- Declare a queue; nothing when one of that name exists (the caller reports it).
INSERT INTO {queues} (name, local_limit, global_limit, rate_limit, rate_period, partitioned, paused)
VALUES (%(name)s, %(limit)s, %(global_limit)s, %(rate_limit)s, %(rate_period)s, %(partitioned)s, %(paused)s)
ON CONFLICT (name) DO NOTHING
RETURNING name
