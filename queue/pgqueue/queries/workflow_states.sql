-- The state and schedule of jobs a workflow insert just wrote, after their release.
SELECT id, state, scheduled_at, cancelled_at, errors
FROM {jobs}
WHERE id = ANY (%(ids)s::bigint[])
