-- The signals a node has not applied yet, oldest first: those after the highest id it applied, and
-- the ids it saw skipped (a transaction that took a lower id may commit after one that took a higher).
SELECT id, action, queue, node, params
FROM {signals}
WHERE id > %(after)s OR id = ANY (%(missing)s::bigint[])
ORDER BY id
LIMIT %(limit)s
