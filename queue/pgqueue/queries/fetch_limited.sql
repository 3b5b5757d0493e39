-- The fetch of a queue with a global and/or rate limit (see fetch_jobs.sql for the acks and the
-- claim), usually one statement on its own:
--   running  = jobs of the queue executing now: this producer's as it counts them, the others' as
--              the snapshot sees them, less those acked by this very statement;
--   admitted = at most min(demand, global_limit - running) jobs, in priority, scheduled_at, id
--              order, whose weights (meta.weight, 1 by default, at most rate_limit) fit in what
--              the rate window has left.
-- Exactness across nodes: the statement locks the queue's admission row, and every admission
-- writes that row. The count of executing jobs comes from the statement's snapshot, taken before
-- the lock wait; it is exact if no admission committed since, that is if the row locked (its
-- newest version) is the row the snapshot sees. Otherwise it admits nothing and says `contended`,
-- and the producer runs it again after lock_limits.sql in one transaction, whose fetch snapshot
-- is taken with the lock held (and which creates the row the first time).
-- The rate limit is a sliding window kept as `slots` of 1/%(slots)s of the period: an admission at
-- time t counts the units started in every slot that overlaps [t - period, t], so no window of one
-- period ever holds more than rate_limit units. Slots are numbered in whole microseconds by integer
-- division (timestamps are microseconds), so no rounding can shift a boundary. The microseconds are
-- read as whole seconds plus the microseconds field: before PostgreSQL 14, extract(epoch) is a double.
-- Admission times come from the database clock and never go backwards per queue (last_start).
-- The second column tells the producer whether jobs were left waiting by a limit, and when to look
-- again (so it neither waits for its next poll nor polls a window that can't have room yet).
WITH commit_mode AS (
    SELECT CASE WHEN %(async_commit)s THEN set_config('synchronous_commit', 'off', true) END AS setting
),
{acks_part}
seen AS (
    -- The admission row as the snapshot sees it.
    SELECT s.xmin::text AS version
    FROM {limit_state} AS s
    WHERE s.queue = %(queue)s AND s.partition_key = ''
),
locked AS (
    -- Its newest version, locked until commit (behind any admission in flight on another node).
    SELECT s.xmin::text AS version, s.last_start, s.slots, s.units
    FROM {limit_state} AS s
    WHERE s.queue = %(queue)s AND s.partition_key = ''
    FOR UPDATE
),
exact AS (
    SELECT EXISTS (SELECT 1 FROM locked JOIN seen USING (version)) AS ok
),
state AS (
    SELECT greatest(clock_timestamp(), s.last_start) AS t, s.slots, s.units
    FROM locked AS s
),
slot AS (
    SELECT st.t,
           div((extract(epoch FROM date_trunc('second', st.t))::bigint * 1000000 + extract(microseconds FROM st.t)::bigint %% 1000000) * %(slots)s, %(period_us)s)::bigint AS cur,
           st.slots, st.units
    FROM state AS st
),
used AS (
    SELECT coalesce(sum(o.u), 0) AS units
    FROM slot, unnest(slot.slots, slot.units) AS o(s, u)
    WHERE o.s >= slot.cur - %(slots)s
),
running AS (
    -- This producer's own jobs are counted by the producer (%(running)s: those still performing;
    -- one that has finished no longer runs, whether or not its ack has landed yet), so acks in
    -- flight from its completer don't shrink its claims. Everyone else's by pgqueue_executing_count
    -- (migration 0009): an ordered walk of the executing index, stopped at the limit, under plan
    -- settings that rule out a bitmap scan. A plain index scan skips the entries of jobs that
    -- stopped executing since the last vacuum (marked dead on first sight), where a bitmap scan,
    -- the plan an unanalyzed table otherwise gets, visits the heap for each of them on every fetch.
    -- The function is stable, so it reads with this statement's snapshot; the jobs acked by this
    -- very statement still look executing there and are left out by id.
    SELECT %(running)s::integer
           + CASE WHEN %(global_limit)s::integer IS NULL THEN 0
                  ELSE {executing_count}(%(queue)s::text, %(producer)s::text,
                                         (SELECT array_agg(id) FROM acked), %(global_limit)s::integer)
             END AS n
),
room AS (
    SELECT CASE WHEN exact.ok
                THEN greatest(0, least(%(demand)s, coalesce(%(global_limit)s - running.n, %(demand)s)))
                ELSE 0 END AS jobs,
           coalesce(%(rate_limit)s - used.units, 2147483647) AS units
    FROM running, used, exact
),
candidates AS (
    -- Locked by the claim's own pick, pgqueue_claim (see fetch_jobs.sql): an index-ordered walk
    -- that stops after `room` rows whatever the table's statistics say; read back by primary key.
    SELECT j.id, j.priority, j.scheduled_at,
           CASE WHEN %(rate_limit)s::integer IS NULL THEN 1
                WHEN jsonb_typeof(j.meta -> 'weight') = 'number'
                THEN least(greatest(floor((j.meta ->> 'weight')::numeric), 1), %(rate_limit)s)::integer
                ELSE 1 END AS weight
    FROM {claim}(%(queue)s::text, (SELECT jobs FROM room)::integer) AS c(id)
    JOIN {jobs} AS j ON j.id = c.id
),
claimed AS (
    -- The longest prefix whose weights fit: a heavy job at the head is not overtaken by light ones.
    SELECT c.id, c.weight
    FROM (SELECT id, weight, sum(weight) OVER (ORDER BY priority, scheduled_at, id) AS total
          FROM candidates) AS c
    WHERE c.total <= (SELECT units FROM room)
    -- Never more than demand; said again here so the planner knows how few rows follow: left to
    -- guess a tenth of the queue, it claims them with a hash join over a scan of the whole table.
    LIMIT %(demand)s
),
fetched AS (
    UPDATE {jobs} AS j
    SET state = 'executing',
        attempt = j.attempt + 1,
        attempted_at = (SELECT t FROM slot),
        attempted_by = ARRAY[%(node)s::text, %(producer)s::text]
    FROM claimed
    WHERE j.id = claimed.id
    RETURNING j.id, j.state, j.queue, j.worker, j.args, j.meta, j.tags, j.errors, j.attempt,
              j.max_attempts, j.priority, j.inserted_at, j.scheduled_at, j.attempted_at,
              j.attempted_by, j.completed_at, j.cancelled_at, j.discarded_at
),
stamped AS (
    -- Record the admission (a new row version, which the next fetch on any node checks against its
    -- snapshot): the new time floor and, for a rate limit, the units in this slot (slots older
    -- than the window are dropped). A fetch that admits nothing writes nothing.
    UPDATE {limit_state} AS s
    SET last_start = slot.t,
        (slots, units) = (
            SELECT coalesce(array_agg(k.s ORDER BY k.s), '{{}}'), coalesce(array_agg(k.u ORDER BY k.s), '{{}}')
            FROM (SELECT o.s, sum(o.u)::integer AS u
                  FROM (SELECT * FROM unnest(s.slots, s.units) AS x(s, u)
                        UNION ALL
                        SELECT slot.cur, (SELECT sum(weight) FROM claimed)::integer) AS o(s, u)
                  WHERE o.s >= slot.cur - %(slots)s AND %(rate_limit)s::integer IS NOT NULL
                  GROUP BY o.s) AS k)
    FROM slot
    WHERE s.queue = %(queue)s AND s.partition_key = '' AND EXISTS (SELECT 1 FROM claimed)
    RETURNING 1
),
waiting AS (
    -- A job left waiting although there was demand: a limit held it back. Looked for only when a
    -- limit cut the claim short; otherwise the claim got all it asked for, or all there was. The
    -- next job in the fetch index's order (not EXISTS, which drops the order and lets the planner
    -- pick a sequential scan that first passes every finished job).
    SELECT CASE WHEN (SELECT count(*) FROM claimed) < %(demand)s
                     AND ((SELECT jobs FROM room) < %(demand)s
                          OR (SELECT count(*) FROM claimed) < (SELECT count(*) FROM candidates))
                THEN (SELECT j.id FROM {jobs} AS j
                      WHERE j.state = 'available' AND j.queue = %(queue)s
                        AND j.id NOT IN (SELECT id FROM claimed)
                      ORDER BY j.priority, j.scheduled_at, j.id
                      LIMIT 1) IS NOT NULL
                ELSE false END AS blocked
)
SELECT (SELECT landed FROM acks_landed) AS acked,
       -- NULL: no limit held a job back. Else seconds until the rate window frees a unit (the
       -- oldest slot counted leaves it), or 0 when it was the global limit (it frees as jobs end).
       CASE WHEN (SELECT blocked FROM waiting) THEN
           CASE WHEN (SELECT units FROM room) > 0 THEN 0
                ELSE greatest(0, (SELECT (min(o.s) + %(slots)s + 1) * %(period_us)s::numeric / %(slots)s
                                         - max((extract(epoch FROM date_trunc('second', slot.t))::bigint * 1000000 + extract(microseconds FROM slot.t)::bigint %% 1000000))
                                  FROM slot, unnest(slot.slots, slot.units) AS o(s, u)
                                  WHERE o.s >= slot.cur - %(slots)s) / 1000000.0)
           END
       END::float8 AS retry_in,
       -- The snapshot missed an admission (or the row is new): nothing admitted, run it locked.
       NOT (SELECT ok FROM exact) AS contended,
       f.*
FROM commit_mode
LEFT JOIN fetched AS f ON true
