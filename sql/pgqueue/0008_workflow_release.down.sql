-- Undo pgqueue 0008: counting and releasing go back to two functions (0006's definition).
CREATE OR REPLACE FUNCTION pgqueue_workflow_resolve(ids bigint[], failures text[], remember boolean) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT SET enable_nestloop = off AS $$
DECLARE
    dependents bigint[];
    resolved_counts bigint[];
    failed_counts bigint[];
    reasons text[];
    ready bigint[];
BEGIN
    WITH recorded AS (
        INSERT INTO pgqueue_workflow_resolved (dep_id, failure)
        SELECT f.id, f.failure FROM unnest(ids, failures) AS f(id, failure)
        WHERE remember
        ON CONFLICT (dep_id) DO NOTHING
        RETURNING dep_id, failure
    ),
    fresh AS (
        SELECT dep_id, failure FROM recorded
        UNION ALL
        SELECT f.id, f.failure
        FROM unnest(ids, failures) AS f(id, failure)
        WHERE NOT remember
          AND NOT EXISTS (SELECT 1 FROM pgqueue_workflow_resolved AS r WHERE r.dep_id = f.id)
    ),
    per_job AS (
        SELECT d.job_id, count(*) AS n, count(f.failure) AS failed, max(f.failure) AS reason
        FROM pgqueue_workflow_deps AS d
        JOIN fresh AS f ON f.dep_id = d.dep_id
        WHERE d.dep_id = ANY (ids)
        GROUP BY d.job_id
    )
    SELECT array_agg(job_id ORDER BY job_id), array_agg(n ORDER BY job_id),
           array_agg(failed ORDER BY job_id), array_agg(reason ORDER BY job_id)
    INTO dependents, resolved_counts, failed_counts, reasons
    FROM per_job;
    IF dependents IS NULL THEN
        RETURN;
    END IF;
    -- Under each dependent's row lock, re-read at its newest version: two nodes counting on one
    -- dependent at once serialise here, and exactly one of them brings it to zero.
    WITH counted AS (
        UPDATE pgqueue_workflow_waits AS w
        -- never below zero: a count gone wrong must not fail the statement that finished the
        -- dependency (an ack batch, a rescue), and every job in it with it
        SET pending = greatest(w.pending - c.n, 0),
            failed_deps = w.failed_deps + c.failed,
            failed_reason = coalesce(c.reason, w.failed_reason)
        FROM unnest(dependents, resolved_counts, failed_counts, reasons) AS c(job_id, n, failed, reason)
        WHERE w.job_id = ANY (dependents) AND w.job_id = c.job_id
        RETURNING w.job_id, w.pending, w.failed_deps, w.on_failure
    )
    SELECT array_agg(counted.job_id ORDER BY counted.job_id) INTO ready
    FROM counted
    WHERE counted.pending = 0 OR (counted.failed_deps > 0 AND counted.on_failure = 'cancel');
    IF ready IS NOT NULL THEN
        PERFORM pgqueue_workflow_release(ready);
    END IF;
END
$$;

DROP INDEX IF EXISTS pgqueue_workflow_waits_received_idx;
DROP INDEX IF EXISTS pgqueue_workflow_signals_sent_idx;
