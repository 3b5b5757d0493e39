-- Record what the jobs of a workflow insert wait for, in one statement: the dependency edges (an
-- edge to a job that already finished is born resolved), the flag on each dependency that arms
-- the trigger releasing its dependents, and one waits row per waiting job with its pending count,
-- its failure policy, the signal it waits for (already there if it was sent before) and its time.
-- Dependencies that are not new in this insert were locked by workflow_lock_deps first.
WITH edges AS (
    SELECT * FROM unnest(%(job_ids)s::bigint[], %(dep_ids)s::bigint[]) AS e(job_id, dep_id)
),
deps AS (
    SELECT j.id, j.state::text AS state,
           j.state::text IN ('completed', 'cancelled', 'discarded') AS finished,
           j.state::text IN ('cancelled', 'discarded') AS failed
    FROM {jobs} AS j
    WHERE j.id IN (SELECT dep_id FROM edges)
),
flagged AS (
    UPDATE {jobs} AS j
    SET has_dependents = true
    WHERE j.id IN (SELECT dep_id FROM edges) AND NOT j.has_dependents
    RETURNING j.id
),
linked AS (
    INSERT INTO {workflow_deps} (dep_id, job_id, resolved)
    SELECT e.dep_id, e.job_id, d.finished
    FROM edges AS e
    JOIN deps AS d ON d.id = e.dep_id
    RETURNING dep_id
),
counts AS (
    SELECT e.job_id,
           count(*) FILTER (WHERE NOT d.finished) AS pending,
           count(*) FILTER (WHERE d.failed) AS failed,
           max('job ' || d.id || ' was ' || d.state) FILTER (WHERE d.failed) AS reason
    FROM edges AS e
    JOIN deps AS d ON d.id = e.dep_id
    GROUP BY e.job_id
),
waits AS (
    SELECT *
    FROM json_to_recordset(%(waits)s::json)
        AS w(job_id bigint, on_failure text, signal text, timeout float8, not_before timestamptz)
),
waiting AS (
    INSERT INTO {workflow_waits} (
        job_id, pending, failed_deps, failed_reason, on_failure, signal, signal_deadline,
        signalled_at, signal_payload, not_before
    )
    SELECT w.job_id, coalesce(c.pending, 0), coalesce(c.failed, 0), c.reason, w.on_failure, w.signal,
           CASE WHEN w.timeout IS NOT NULL THEN now() + make_interval(secs => w.timeout) END,
           s.sent_at, s.payload, w.not_before
    FROM waits AS w
    LEFT JOIN counts AS c ON c.job_id = w.job_id
    LEFT JOIN {workflow_signals} AS s ON s.name = w.signal
    RETURNING job_id
)
SELECT (SELECT count(*) FROM linked), (SELECT count(*) FROM flagged), (SELECT count(*) FROM waiting)
