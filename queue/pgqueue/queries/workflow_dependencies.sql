-- What a job depends on, for a step to read: each dependency's id, workflow step name, state and
-- result (as text, decoded by the caller whatever the driver). A pruned dependency is absent.
SELECT j.id, j.meta -> 'workflow' ->> 'step', j.state::text, j.result::text
FROM {workflow_deps} AS d
JOIN {jobs} AS j ON j.id = d.dep_id
WHERE d.job_id = %(id)s
ORDER BY j.id
