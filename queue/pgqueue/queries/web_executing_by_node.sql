-- Executing jobs per queue and node (the first element of attempted_by), from the small partial
-- index on executing jobs.
SELECT queue, coalesce(attempted_by[1], '?') AS node, count(*)
FROM {jobs}
WHERE state = 'executing'
GROUP BY 1, 2
ORDER BY 1, 2
