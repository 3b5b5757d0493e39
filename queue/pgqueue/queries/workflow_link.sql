-- Record what the jobs of a workflow insert wait for, in one statement: the dependency edges (a
-- job that already finished, or finished once before being retried, counts as finished, with the
-- outcome of its first finish), the flag on each dependency that arms
-- the trigger releasing its dependents, and one waits row per waiting job with its pending count,
-- its failure policy, the signal it waits for (already there if it was sent before) and its time.
-- Dependencies that are not new in this insert were locked by workflow_lock_deps first.
WITH edges AS (
    SELECT * FROM unnest(%(job_ids)s::bigint[], %(dep_ids)s::bigint[]) AS e(job_id, dep_id)
),
deps AS (
    SELECT j.id,
           coalesce(r.failure, 'job ' || j.id || ' was ' || j.state::text) AS reason,
           r.dep_id IS NOT NULL OR j.state::text IN ('completed', 'cancelled', 'discarded') AS finished,
           CASE WHEN r.dep_id IS NOT NULL THEN r.failure IS NOT NULL
                ELSE j.state::text IN ('cancelled', 'discarded') END AS failed
    FROM {jobs} AS j
    LEFT JOIN {workflow_resolved} AS r ON r.dep_id = j.id
    WHERE j.id IN (SELECT dep_id FROM edges)
),
flagged AS (
    UPDATE {jobs} AS j
    SET has_dependents = true
    WHERE j.id IN (SELECT id FROM deps WHERE NOT finished) AND NOT j.has_dependents
    RETURNING j.id
),
-- A dependency that finished before anything depended on it is recorded as finished now, so
-- that finishing again (retried by hand) counts nothing, as for any other.
remembered AS (
    INSERT INTO {workflow_resolved} (dep_id, failure)
    SELECT d.id, CASE WHEN d.failed THEN d.reason END
    FROM deps AS d
    WHERE d.finished
    ON CONFLICT (dep_id) DO NOTHING
    RETURNING dep_id
),
linked AS (
    INSERT INTO {workflow_deps} (dep_id, job_id)
    SELECT e.dep_id, e.job_id
    FROM edges AS e
    JOIN deps AS d ON d.id = e.dep_id
    RETURNING dep_id
),
counts AS (
    SELECT e.job_id,
           count(*) FILTER (WHERE NOT d.finished) AS pending,
           count(*) FILTER (WHERE d.failed) AS failed,
           max(d.reason) FILTER (WHERE d.failed) AS reason
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
SELECT (SELECT count(*) FROM linked), (SELECT count(*) FROM flagged), (SELECT count(*) FROM remembered),
       (SELECT count(*) FROM waiting)
