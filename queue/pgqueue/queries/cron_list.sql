-- The cron entries declared in the database, by name; `enabled_only` for the cron plugin's round.
SELECT name, expression, timezone, worker, args, queue, priority, max_attempts, enabled
FROM {cron}
WHERE enabled OR NOT %(enabled_only)s
ORDER BY name
