-- The recovery plugin's first look: deliveries left `dispatched` for longer than a send and its
-- record take (a worker killed after the claim, a job deleted or discarded), oldest first.
-- Served by the partial index of open deliveries (status, updated_at), so a healthy table costs
-- an index probe that finds nothing. The rows stay locked until the round commits; another
-- round, or a worker recording an attempt, skips or waits for them. A journey's delivery comes
-- back with its run and step, so its new job is the journey's dispatch job.
SELECT d.id, d.journey_run_id, d.journey_step
FROM {deliveries} AS d
WHERE d.status = 'dispatched'
  AND d.updated_at < now() - make_interval(secs => %(stuck_after)s)
ORDER BY d.updated_at
LIMIT %(limit)s
FOR UPDATE OF d SKIP LOCKED
