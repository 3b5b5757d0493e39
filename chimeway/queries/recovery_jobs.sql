-- The recovery plugin's second look, only when some delivery is stuck: the dispatch jobs of those
-- deliveries, by whether one is still live (it will run, or is running: not ours to re-drive).
-- Jobs are found by their args, which no index covers: one pass over the queue's jobs (the live
-- backlog and the finished jobs the pruner has not removed yet), and only in a round that found
-- stuck deliveries.
SELECT j.args->>'delivery_id' AS delivery_id,
       bool_or(j.state IN ('available', 'scheduled', 'executing', 'retryable')) AS live
FROM {jobs} AS j
WHERE j.queue = %(queue)s
  AND j.args->>'delivery_id' = ANY(%(ids)s::text[])
GROUP BY 1
