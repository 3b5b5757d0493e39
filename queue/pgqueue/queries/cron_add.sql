-- Declare a cron entry; nothing when one of that name exists (the caller reports it).
INSERT INTO {cron} (name, expression, timezone, worker, args, queue, priority, max_attempts, enabled)
VALUES (%(name)s, %(expression)s, %(timezone)s, %(worker)s, %(args)s::jsonb, %(queue)s, %(priority)s,
        %(max_attempts)s, %(enabled)s)
ON CONFLICT (name) DO NOTHING
RETURNING name
