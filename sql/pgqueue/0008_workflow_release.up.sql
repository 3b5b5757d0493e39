-- pgqueue 0008: a finished dependency counts on its dependents and releases them in one statement.
-- Applied with search_path set to the target schema, so every name here lands in that schema.
--
-- Before: pgqueue_workflow_resolve updated the dependents' waits rows in one statement, gathered
-- the ones that reached zero into an array, and called pgqueue_workflow_release, which read those
-- rows again, locked them again (FOR UPDATE) and only then moved their jobs. The waits rows are
-- already locked and at their newest version in the RETURNING of the counting UPDATE, so the job
-- update now reads them from there, in the same statement: one pass over the dependents instead of
-- three. pgqueue_workflow_release stays for the paths that don't count (a signal, an insert).
--
-- The function's statements are planned once per session (plan_cache_mode = force_generic_plan):
-- every ack batch that finishes a dependency runs them, and with custom plans PostgreSQL planned
-- both again on every call (its generic plan looks costlier than the custom plan for arrays of
-- unknown length, so it never switches). The generic plans probe the primary keys with `= ANY`,
-- which is what the custom plans did for a batch, and stays linear for a 10,000-way fan-out.
-- Measured as the backend's CPU time for 10,000 fan-in acks in batches of 100, 5 interleaved
-- rounds: the counting took 0.09-0.13 s before and 0.06-0.07 s after, against 0.10-0.11 s for
-- the acks themselves with the trigger disabled.
CREATE OR REPLACE FUNCTION pgqueue_workflow_resolve(ids bigint[], failures text[], remember boolean) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT SET enable_nestloop = off
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    dependents bigint[];
    resolved_counts bigint[];
    failed_counts bigint[];
    reasons text[];
    woken bigint;
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
    -- dependent at once serialise here, and exactly one of them brings it to zero and moves it.
    WITH counted AS (
        UPDATE pgqueue_workflow_waits AS w
        -- never below zero: a count gone wrong must not fail the statement that finished the
        -- dependency (an ack batch, a rescue), and every job in it with it
        SET pending = greatest(w.pending - c.n, 0),
            failed_deps = w.failed_deps + c.failed,
            failed_reason = coalesce(c.reason, w.failed_reason)
        FROM unnest(dependents, resolved_counts, failed_counts, reasons) AS c(job_id, n, failed, reason)
        WHERE w.job_id = ANY (dependents) AND w.job_id = c.job_id
        RETURNING w.*
    ),
    -- What pgqueue_workflow_release decides for each job nothing holds any more (see 0006)
    plan AS (
        SELECT c.job_id, c.failed_reason, c.signal, c.signalled_at, c.signal_payload,
               CASE WHEN c.failed_deps > 0 AND c.on_failure = 'cancel' THEN 'cancelled'
                    WHEN c.signal IS NOT NULL AND c.signalled_at IS NULL THEN
                        CASE WHEN c.signal_deadline IS NULL THEN NULL
                             WHEN c.signal_deadline > now() THEN 'waiting'
                             ELSE 'available' END
                    WHEN c.not_before > now() THEN 'scheduled'
                    ELSE 'available' END AS next,
               CASE WHEN c.signal IS NOT NULL AND c.signalled_at IS NULL THEN c.signal_deadline
                    ELSE c.not_before END AS at
        FROM counted AS c
        WHERE c.pending = 0 OR (c.failed_deps > 0 AND c.on_failure = 'cancel')
    ),
    moved AS (
        UPDATE jobs AS j
        SET state = CASE WHEN p.next IN ('waiting', 'scheduled') THEN 'scheduled' ELSE p.next END::job_state,
            scheduled_at = CASE WHEN p.next IN ('waiting', 'scheduled') THEN p.at
                                WHEN p.next = 'available' THEN now()
                                ELSE j.scheduled_at END,
            cancelled_at = CASE WHEN p.next = 'cancelled' THEN now() ELSE j.cancelled_at END,
            errors = CASE WHEN p.next = 'cancelled'
                          THEN j.errors || jsonb_build_array(jsonb_build_object(
                              'attempt', j.attempt, 'at', now(),
                              'error', 'cancelled because ' || coalesce(p.failed_reason, 'a dependency failed')))
                          ELSE j.errors END,
            meta = CASE WHEN p.signalled_at IS NOT NULL AND jsonb_typeof(j.meta) = 'object'
                        THEN j.meta || jsonb_build_object('signal', jsonb_build_object(
                            'name', p.signal, 'payload', p.signal_payload, 'sent_at', p.signalled_at))
                        ELSE j.meta END
        FROM plan AS p
        -- `= ANY` keeps the join on the primary key whatever the planner estimates; only a job
        -- still parked and never attempted moves, so a late or duplicate count changes nothing
        WHERE j.id = ANY (dependents) AND j.id = p.job_id AND p.next IS NOT NULL
          AND j.state = 'scheduled' AND j.attempted_at IS NULL
        RETURNING j.queue, j.state
    )
    -- wake the queues that received a job; a channel name over PostgreSQL's 63 bytes (a very long
    -- schema name, which pgqueue hashes) is left to the producers' polling
    SELECT count(pg_notify('pgqueue.' || current_schema() || '.insert',
                           json_build_object('queue', q.queue)::text))
    INTO woken
    FROM (SELECT DISTINCT queue FROM moved WHERE state = 'available') AS q
    WHERE octet_length('pgqueue.' || current_schema() || '.insert') <= 63;
END
$$;

-- The pruner deletes workflow signals (queries/workflow_signals_prune.sql): the oldest first, and
-- those a step received. These two indexes keep each run a short walk, however many signals
-- and waiting steps there are.
CREATE INDEX pgqueue_workflow_signals_sent_idx ON pgqueue_workflow_signals (sent_at);
CREATE INDEX pgqueue_workflow_waits_received_idx ON pgqueue_workflow_waits (signal)
    WHERE signal IS NOT NULL AND signalled_at IS NOT NULL;
