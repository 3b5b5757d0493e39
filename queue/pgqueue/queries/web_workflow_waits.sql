-- What the parked jobs of a dashboard page wait for (a waiting workflow step is `scheduled` at
-- 9999-06-01, which says nothing to a reader): one waits row per job, by primary key.
SELECT job_id, pending, signal, signalled_at, signal_deadline, not_before
FROM {workflow_waits}
WHERE job_id = ANY (%(ids)s::bigint[])
