-- One declared queue, locked for the rest of the transaction when it is about to change (an update
-- merges the given fields into the row it read, so two updates must not interleave).
SELECT name, local_limit, global_limit, rate_limit, rate_period, partitioned, paused, updated_at
FROM {queues}
WHERE name = %(name)s
FOR NO KEY UPDATE
