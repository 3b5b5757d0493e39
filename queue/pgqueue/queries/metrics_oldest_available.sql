-- Seconds the oldest available job of each queue has been waiting since it became due: how far
-- behind each queue is. Reads only available jobs (the fetch index's partial set).
SELECT queue, extract(epoch FROM now() - min(scheduled_at))::float8
FROM {jobs}
WHERE state = 'available'
GROUP BY queue
