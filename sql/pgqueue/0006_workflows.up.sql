-- pgqueue 0006: workflows (jobs that depend on other jobs), signals and timers.
-- Applied with search_path set to the target schema, so every name here lands in that schema; the
-- functions keep that search_path (SET search_path FROM CURRENT), whoever calls them.
--
-- A job that waits (on dependencies, on a signal, or until a time) is an ordinary `scheduled` row
-- parked at the far-future instant 9999-06-01 00:00 UTC, past every stager horizon (the testing
-- drain stages up to 9999-01-01). Neither the fetch (its index holds `available` rows only) nor the
-- stager (an index range scan that stops at now()) ever reads a parked row, so waiting costs the
-- hot path nothing. No new job_state value: PostgreSQL refuses to use an enum value in the
-- transaction that added it (the migrator applies every pending migration in one) and can't drop
-- one in a down migration.
--
-- Readiness is decided in the statement that finishes a dependency, whichever statement that is
-- (an ack, the lifeline discarding an orphan, a cancel, a hand-written UPDATE): a statement-level
-- trigger on jobs reads the rows the statement left final with `has_dependents` set, resolves
-- each once (a retried, rescued or re-run dependency resolves nothing twice), subtracts
-- them from each dependent's pending counter under its row lock (so two nodes finishing two
-- dependencies of one job at once serialise on that row, and exactly one of them sees zero), and
-- releases the dependents whose count reached zero. Nothing polls, nothing scans workflows.

-- true once some job depends on this one: the trigger's guard (a constant default: no rewrite)
ALTER TABLE jobs ADD COLUMN has_dependents boolean NOT NULL DEFAULT false;

-- One row per dependency edge: `job_id` waits for `dep_id` to finish. Written once, at insert.
CREATE TABLE pgqueue_workflow_deps (
    dep_id      bigint  NOT NULL,
    job_id      bigint  NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    PRIMARY KEY (dep_id, job_id)
);

COMMENT ON TABLE pgqueue_workflow_deps IS 'pgqueue workflow dependencies (managed by pgqueue migrations)';

-- Deleting a job (the pruner) cascades to its edges through this index.
CREATE INDEX pgqueue_workflow_deps_job_idx ON pgqueue_workflow_deps (job_id);

-- One row per dependency the first time it finished (with why it failed, NULL when it completed):
-- what makes counting idempotent. A dependency finishing again (retried by hand) finds its row
-- and counts nothing; one row per finished job, however many jobs wait for it, where marking
-- each edge would write 10,000 rows for the root of a 10,000-way fan-out.
CREATE TABLE pgqueue_workflow_resolved (
    -- no foreign key: the delete trigger below removes a job's row after reading it
    dep_id      bigint      PRIMARY KEY,
    failure     text,
    resolved_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE pgqueue_workflow_resolved IS 'pgqueue workflow dependencies that finished (managed by pgqueue migrations)';

-- One row per waiting job: what it still waits for.
CREATE TABLE pgqueue_workflow_waits (
    job_id          bigint      PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    -- dependencies not finished yet
    pending         integer     NOT NULL DEFAULT 0,
    -- dependencies that ended cancelled or discarded (or were deleted unfinished)
    failed_deps     integer     NOT NULL DEFAULT 0,
    -- the last of them, as "job 12 was discarded", for the error a cascade cancel records
    failed_reason   text,
    -- what a failed dependency does to this job: cancel it at once, or count as finished
    on_failure      text        NOT NULL DEFAULT 'cancel',
    -- a named signal to wait for, how long at most, and what arrived
    signal          text,
    signal_deadline timestamptz,
    signalled_at    timestamptz,
    signal_payload  jsonb,
    -- not to run before this time, once everything else is there
    not_before      timestamptz,

    CONSTRAINT pgqueue_workflow_waits_on_failure CHECK (on_failure IN ('cancel', 'run')),
    CONSTRAINT pgqueue_workflow_waits_pending CHECK (pending >= 0)
) WITH (fillfactor = 70);

COMMENT ON TABLE pgqueue_workflow_waits IS 'pgqueue workflow waits (managed by pgqueue migrations)';

-- Jobs waiting for a signal, found by its name when it is sent.
CREATE INDEX pgqueue_workflow_waits_signal_idx ON pgqueue_workflow_waits (signal)
    WHERE signal IS NOT NULL AND signalled_at IS NULL;

-- Signals are kept: a signal sent before a job starts waiting for it releases the job at insert.
-- The newest payload of a name wins.
CREATE TABLE pgqueue_workflow_signals (
    name        text        PRIMARY KEY,
    payload     jsonb,
    sent_at     timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT pgqueue_workflow_signals_name_length CHECK (char_length(name) BETWEEN 1 AND 255)
);

COMMENT ON TABLE pgqueue_workflow_signals IS 'pgqueue workflow signals (managed by pgqueue migrations)';

-- Move the given waiting jobs on when nothing holds them any more: cancelled when a dependency
-- failed under the cancel policy; scheduled at the signal's deadline while a signal is still
-- awaited (the stager then runs the job without it); scheduled at not_before when that is later;
-- available otherwise, waking its queue. Only a job still `scheduled` and never attempted is
-- touched, and the edges and signal feeding a wait are counted once each: releasing is idempotent,
-- so a late or duplicate call changes nothing. Returns how many jobs left their wait.
--
-- PL/pgSQL rather than SQL for its cached plans (a SQL function is planned again on every call
-- before PostgreSQL 18). No nested loops: the rows joined here come from CTEs and arrays the
-- planner can't estimate, and a nested loop rescanning 10,000 of them per row of 10,000 others
-- turns a fan-out into minutes; hash joins keep every size linear.
CREATE FUNCTION pgqueue_workflow_release(ids bigint[]) RETURNS integer
LANGUAGE plpgsql SET search_path FROM CURRENT SET enable_nestloop = off AS $$
DECLARE
    moved_count integer;
BEGIN
    WITH candidates AS (
        SELECT w.job_id,
               w.failed_deps > 0 AND w.on_failure = 'cancel' AS cancel,
               w.signal IS NOT NULL AND w.signalled_at IS NULL AS awaiting,
               w.signal_deadline, w.not_before, w.failed_reason, w.signal, w.signalled_at,
               w.signal_payload
        FROM pgqueue_workflow_waits AS w
        WHERE w.job_id = ANY (ids)
          AND (w.pending = 0 OR (w.failed_deps > 0 AND w.on_failure = 'cancel'))
        ORDER BY w.job_id
        FOR UPDATE OF w
    ),
    plan AS (
        SELECT c.*,
               CASE WHEN c.cancel THEN 'cancelled'
                    WHEN c.awaiting AND c.signal_deadline IS NULL THEN NULL
                    WHEN c.awaiting AND c.signal_deadline > now() THEN 'waiting'
                    WHEN NOT c.awaiting AND c.not_before > now() THEN 'scheduled'
                    ELSE 'available' END AS next
        FROM candidates AS c
    ),
    moved AS (
        UPDATE jobs AS j
        SET state = CASE WHEN p.next IN ('waiting', 'scheduled') THEN 'scheduled' ELSE p.next END::job_state,
            scheduled_at = CASE WHEN p.next = 'waiting' THEN p.signal_deadline
                                WHEN p.next = 'scheduled' THEN p.not_before
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
        -- `= ANY` keeps the join on the primary key whatever the planner estimates
        WHERE j.id = ANY (ids) AND j.id = p.job_id AND p.next IS NOT NULL
          AND j.state = 'scheduled' AND j.attempted_at IS NULL
        RETURNING j.id, j.queue, j.state, p.next
    ),
    woken AS (
        -- wake the queues that received a job; a channel name over PostgreSQL's 63 bytes (a very
        -- long schema name, which pgqueue hashes) is left to the producers' polling
        SELECT count(pg_notify('pgqueue.' || current_schema() || '.insert',
                               json_build_object('queue', q.queue)::text)) AS n
        FROM (SELECT DISTINCT queue FROM moved WHERE state = 'available') AS q
        WHERE octet_length('pgqueue.' || current_schema() || '.insert') <= 63
    )
    SELECT (SELECT count(*) FROM moved WHERE moved.next <> 'waiting') INTO moved_count FROM woken;
    RETURN moved_count;
END
$$;

-- Count finished dependencies (ids, with why each failed, NULL when it completed) on their
-- dependents, the first time each finishes only, then release the dependents nothing holds any more. Set-based: a
-- statement that finishes a hundred dependencies of one job updates that job's waits row once.
-- The `= ANY` conditions keep both updates on their primary keys whatever the planner estimates.
-- No nested loops, as in pgqueue_workflow_release.
--
-- `remember` false is for deleted jobs: they can't finish again, and their row would outlive them;
-- one that had finished before (then retried, then deleted) was counted then and counts nothing.
CREATE FUNCTION pgqueue_workflow_resolve(ids bigint[], failures text[], remember boolean) RETURNS void
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

-- After every UPDATE of jobs, once per statement: the jobs it left in a final state that some job
-- depends on. A statement of jobs nobody depends on (nearly all of them) costs one pass over its
-- transition table. A job finishing again (retried by hand) is resolved already and counts nothing.
CREATE FUNCTION pgqueue_workflow_finished() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    ids bigint[];
    failures text[];
BEGIN
    SELECT array_agg(n.id ORDER BY n.id),
           array_agg(CASE WHEN n.state = 'completed' THEN NULL
                          ELSE 'job ' || n.id || ' was ' || n.state::text END ORDER BY n.id)
    INTO ids, failures
    FROM pgqueue_updated_jobs AS n
    WHERE n.has_dependents AND n.state IN ('completed', 'cancelled', 'discarded');
    IF ids IS NOT NULL THEN
        PERFORM pgqueue_workflow_resolve(ids, failures, true);
    END IF;
    RETURN NULL;
END
$$;

-- After every DELETE of jobs: a dependency deleted before it finished counts as failed, so its
-- dependents never wait for ever; a deleted dependency's resolved row goes with it.
CREATE FUNCTION pgqueue_workflow_deleted() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    ids bigint[];
    failures text[];
BEGIN
    SELECT array_agg(o.id ORDER BY o.id),
           array_agg('job ' || o.id || ' was deleted before it finished' ORDER BY o.id)
    INTO ids, failures
    FROM pgqueue_deleted_jobs AS o
    WHERE o.has_dependents AND o.state NOT IN ('completed', 'cancelled', 'discarded');
    IF ids IS NOT NULL THEN
        PERFORM pgqueue_workflow_resolve(ids, failures, false);
    END IF;
    DELETE FROM pgqueue_workflow_resolved
    WHERE dep_id = ANY (ARRAY(SELECT o.id FROM pgqueue_deleted_jobs AS o WHERE o.has_dependents));
    RETURN NULL;
END
$$;

-- Statement-level, with transition tables: every row a statement finished is seen at once, after
-- the statement, so two dependencies of one job acked in one batch are counted together (sibling
-- CTEs would share one snapshot and each see the other's dependency unfinished).
CREATE TRIGGER jobs_workflow_finished
    AFTER UPDATE ON jobs
    REFERENCING NEW TABLE AS pgqueue_updated_jobs
    FOR EACH STATEMENT
    EXECUTE FUNCTION pgqueue_workflow_finished();

CREATE TRIGGER jobs_workflow_deleted
    AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS pgqueue_deleted_jobs
    FOR EACH STATEMENT
    EXECUTE FUNCTION pgqueue_workflow_deleted();

-- Send signal `name` with `payload`: kept for jobs that start waiting later, and releasing every
-- job waiting for it now. Callable from SQL (`SELECT pgqueue_signal('approved', '{"by": 7}')`), from
-- a trigger or from another application; returns how many waiting jobs it released. The advisory
-- lock pairs with the one a workflow insert takes on the names it waits for, so a signal and a
-- new waiter committing at the same time never miss each other.
CREATE FUNCTION pgqueue_signal(name text, payload jsonb DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    waiting bigint[];
BEGIN
    IF name IS NULL OR char_length(name) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'signal name must be 1 to 255 characters, got %', coalesce(quote_literal(name), 'NULL')
            USING ERRCODE = '22023';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('pgqueue.workflow_signal'), hashtext(name));
    INSERT INTO pgqueue_workflow_signals AS s (name, payload, sent_at)
    VALUES (pgqueue_signal.name, pgqueue_signal.payload, now())
    ON CONFLICT ON CONSTRAINT pgqueue_workflow_signals_pkey
    DO UPDATE SET payload = excluded.payload, sent_at = excluded.sent_at;
    WITH hit AS (
        UPDATE pgqueue_workflow_waits AS w
        SET signalled_at = now(), signal_payload = pgqueue_signal.payload
        WHERE w.signal = pgqueue_signal.name AND w.signalled_at IS NULL
        RETURNING w.job_id
    )
    SELECT array_agg(hit.job_id ORDER BY hit.job_id) INTO waiting FROM hit;
    IF waiting IS NULL THEN
        RETURN 0;
    END IF;
    RETURN pgqueue_workflow_release(waiting);
END
$$;
