-- Deliveries that have not ended, by status: what an operator (or a benchmark waiting for a run to
-- finish) asks. Served by the partial index of open deliveries.
SELECT status, count(*)
FROM {deliveries}
WHERE status IN ('pending', 'dispatched', 'failed')
GROUP BY status
