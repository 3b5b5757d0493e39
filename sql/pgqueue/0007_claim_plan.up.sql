-- pgqueue 0007: the picks of the claim, the stager, the lifeline and the pruner, planned the same
-- way whatever the statistics say.
-- Applied with search_path set to the target schema, so every name here lands in that schema.
--
-- Without statistics (a fresh table, autovacuum disabled or starved) the planner guesses that a few
-- dozen rows are available, and for a few dozen rows a bitmap heap scan plus a sort looks cheaper
-- than walking the fetch index in order. With a backlog of a million rows that plan reads every
-- available row and sorts them on disk for each claim of 100: ~1 s instead of ~1 ms. The settings
-- below hold only while these functions run, so the index-ordered walk, which stops after `demand`
-- rows, is the one plan they can take. The stager and the lifeline flip the same way once their
-- LIMIT exceeds the guess (a backlog of due or orphaned jobs is read whole and sorted each run). `search_path FROM CURRENT` pins the schema they were made in.

CREATE FUNCTION pgqueue_claim(claim_queue text, demand integer)
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE
ROWS 100
SET search_path FROM CURRENT
SET enable_sort = off
SET enable_bitmapscan = off
SET enable_seqscan = off
AS $$
BEGIN
    RETURN QUERY
    SELECT j.id
    FROM jobs AS j
    WHERE j.state = 'available' AND j.queue = claim_queue
    ORDER BY j.priority, j.scheduled_at, j.id
    LIMIT demand
    FOR UPDATE SKIP LOCKED;
END
$$;

COMMENT ON FUNCTION pgqueue_claim(text, integer) IS
    'pgqueue: lock up to demand available jobs of a queue in fetch order, skipping locked ones';

-- The pruner's pick: finished jobs older than max_age seconds, at most `lim`, each state read
-- from its own index (a bitmap scan would first collect every finished row of the table).
CREATE FUNCTION pgqueue_prunable(max_age float8, lim integer)
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
SET enable_bitmapscan = off
SET enable_seqscan = off
AS $$
BEGIN
    RETURN QUERY
    (SELECT j.id FROM jobs AS j
     WHERE j.state = 'completed' AND j.completed_at < now() - make_interval(secs => max_age)
     LIMIT lim)
    UNION ALL
    (SELECT j.id FROM jobs AS j
     WHERE j.state = 'cancelled' AND j.cancelled_at < now() - make_interval(secs => max_age)
     LIMIT lim)
    UNION ALL
    (SELECT j.id FROM jobs AS j
     WHERE j.state = 'discarded' AND j.discarded_at < now() - make_interval(secs => max_age)
     LIMIT lim)
    LIMIT lim;
END
$$;

COMMENT ON FUNCTION pgqueue_prunable(float8, integer) IS
    'pgqueue: up to lim finished jobs older than max_age seconds, read from the pruning indexes';

-- The stager's pick: due scheduled and retryable jobs, oldest first, walked in the staging index.
CREATE FUNCTION pgqueue_due(until timestamptz, due_queue text, lim integer)
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
SET enable_sort = off
SET enable_bitmapscan = off
SET enable_seqscan = off
AS $$
BEGIN
    RETURN QUERY
    SELECT j.id
    FROM jobs AS j
    WHERE j.state IN ('scheduled', 'retryable')
      AND j.scheduled_at <= coalesce(until, now())
      AND (due_queue IS NULL OR j.queue = due_queue)
    ORDER BY j.scheduled_at, j.id
    LIMIT lim
    FOR UPDATE OF j SKIP LOCKED;
END
$$;

COMMENT ON FUNCTION pgqueue_due(timestamptz, text, integer) IS
    'pgqueue: lock up to lim due scheduled or retryable jobs, oldest first, skipping locked ones';

-- The lifeline's pick: executing jobs whose producer stopped heartbeating (or that ran past the
-- rescue_after backstop), oldest attempt first, walked in the executing index. attempted_by[2] is
-- the uuid of the producer that claimed the job.
CREATE FUNCTION pgqueue_orphans(heartbeat_window float8, rescue_after float8, lim integer)
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
SET enable_sort = off
SET enable_bitmapscan = off
SET enable_seqscan = off
AS $$
BEGIN
    RETURN QUERY
    SELECT j.id
    FROM jobs AS j
    WHERE j.state = 'executing'
      AND (
          NOT EXISTS (
              SELECT 1 FROM pgqueue_producers AS p
              WHERE p.uuid::text = j.attempted_by[2]
                AND p.updated_at > now() - make_interval(secs => heartbeat_window)
          )
          OR j.attempted_at < now() - make_interval(secs => rescue_after)
      )
    ORDER BY j.attempted_at
    LIMIT lim
    FOR UPDATE OF j SKIP LOCKED;
END
$$;

COMMENT ON FUNCTION pgqueue_orphans(float8, float8, integer) IS
    'pgqueue: lock up to lim orphaned executing jobs, oldest attempt first, skipping locked ones';
