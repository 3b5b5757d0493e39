-- The rare second look of the dispatch worker: the current status of deliveries a batch statement
-- skipped (lost a compare-and-set to a concurrent transaction, refused a transition, or deleted).
-- Absent rows are deliveries that no longer exist.
SELECT id, status
FROM {deliveries}
WHERE id = ANY(%(ids)s::uuid[])
