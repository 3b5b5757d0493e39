-- Forget a declared cron entry (the jobs it inserted stay).
DELETE FROM {cron}
WHERE name = %(name)s
RETURNING name
