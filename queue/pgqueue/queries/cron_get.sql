-- One declared cron entry, locked for the rest of the transaction when it is about to change (an
-- update merges the given fields into the row it read).
SELECT name, expression, timezone, worker, args, queue, priority, max_attempts, enabled
FROM {cron}
WHERE name = %(name)s
FOR NO KEY UPDATE
