-- Replace a declared cron entry's fields (the caller merged and validated them under cron_get's lock).
UPDATE {cron}
SET expression = %(expression)s,
    timezone = %(timezone)s,
    worker = %(worker)s,
    args = %(args)s::jsonb,
    queue = %(queue)s,
    priority = %(priority)s,
    max_attempts = %(max_attempts)s,
    enabled = %(enabled)s,
    updated_at = now()
WHERE name = %(name)s
RETURNING name
