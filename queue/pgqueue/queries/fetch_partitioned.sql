-- The fetch of a partitioned limited queue: fetch_limited.sql with the global and rate limits
-- applied per partition key (a job's meta.partition_key; jobs without one share the default
-- partition ''), after lock_limits.sql has locked the queue's admission row in this transaction.
-- Fairness: the distinct keys with jobs waiting are found by a loose index scan of
-- jobs_partition_idx (one index descent per partition, whatever each one's backlog), every
-- partition with room offers its first jobs, and they are taken round by round: every
-- partition's first job (in priority, scheduled_at, id order) before anyone's second. A partition
-- with 100,000 jobs waiting therefore can't hold back one with 10.
-- Keyless jobs are looked for among the queue's first 1,000 waiting jobs only (they have no index
-- of their own); give every job of a partitioned queue a key (Worker's partition_by).
-- Partitions' rate windows are rows '=' || key of the admission table, forgotten once stale.
WITH commit_mode AS (
    SELECT CASE WHEN %(async_commit)s THEN set_config('synchronous_commit', 'off', true) END AS setting
),
{acks_part}
clock AS (
    SELECT greatest(clock_timestamp(), s.last_start) AS t,
           div((extract(epoch FROM date_trunc('second', greatest(clock_timestamp(), s.last_start)))::bigint * 1000000 + extract(microseconds FROM greatest(clock_timestamp(), s.last_start))::bigint %% 1000000)
               * %(slots)s, %(period_us)s)::bigint AS cur
    FROM {limit_state} AS s
    WHERE s.queue = %(queue)s AND s.partition_key = ''
),
keyed AS (
    WITH RECURSIVE walk(k) AS (
        (SELECT j.meta ->> 'partition_key'
         FROM {jobs} AS j
         WHERE j.state = 'available' AND j.queue = %(queue)s AND j.meta ? 'partition_key'
         ORDER BY j.meta ->> 'partition_key'
         LIMIT 1)
        UNION ALL
        SELECT (SELECT j.meta ->> 'partition_key'
                FROM {jobs} AS j
                WHERE j.state = 'available' AND j.queue = %(queue)s AND j.meta ? 'partition_key'
                  AND j.meta ->> 'partition_key' > walk.k
                ORDER BY j.meta ->> 'partition_key'
                LIMIT 1)
        FROM walk
        WHERE walk.k IS NOT NULL
    )
    SELECT k FROM walk WHERE k IS NOT NULL
),
keyless AS (
    SELECT h.id, h.priority, h.scheduled_at, h.meta
    FROM (SELECT j.id, j.priority, j.scheduled_at, j.meta
          FROM {jobs} AS j
          WHERE j.state = 'available' AND j.queue = %(queue)s
          ORDER BY j.priority, j.scheduled_at, j.id
          LIMIT 1000) AS h
    WHERE h.meta ->> 'partition_key' IS NULL
),
running AS (
    -- An ordered walk of the executing index (see fetch_limited.sql), skipped without a global limit.
    SELECT coalesce(e.meta ->> 'partition_key', '') AS k, count(*) AS n
    FROM (SELECT j.meta
          FROM {jobs} AS j
          WHERE j.state = 'executing' AND j.queue = %(queue)s
            AND j.id NOT IN (SELECT id FROM acked)
            AND %(global_limit)s::integer IS NOT NULL
          ORDER BY j.attempted_at
          LIMIT 1000000) AS e
    GROUP BY 1
),
parts AS (
    SELECT p.k,
           greatest(0, least(%(demand)s, coalesce(%(global_limit)s - coalesce(r.n, 0), %(demand)s))) AS jobs,
           coalesce(%(rate_limit)s - (SELECT coalesce(sum(o.u), 0)
                                      FROM unnest(s.slots, s.units) AS o(s, u)
                                      WHERE o.s >= clock.cur - %(slots)s), 2147483647) AS units
    FROM (SELECT k FROM keyed UNION ALL SELECT '' WHERE EXISTS (SELECT 1 FROM keyless)) AS p(k)
    CROSS JOIN clock
    LEFT JOIN running AS r ON r.k = p.k
    LEFT JOIN {limit_state} AS s ON s.queue = %(queue)s AND s.partition_key = '=' || p.k
),
open_parts AS (
    SELECT parts.*, ceil(%(demand)s::numeric / count(*) OVER ())::integer AS share
    FROM parts
    WHERE parts.jobs > 0 AND parts.units > 0
),
offered AS (
    SELECT p.k, p.units, c.id, c.priority, c.scheduled_at, c.meta
    FROM open_parts AS p
    CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.scheduled_at, j.meta
        FROM {jobs} AS j
        WHERE j.state = 'available' AND j.queue = %(queue)s AND j.meta ? 'partition_key'
          AND j.meta ->> 'partition_key' = p.k
        ORDER BY j.priority, j.scheduled_at, j.id
        LIMIT least(p.jobs, p.share + 1)
    ) AS c
    WHERE p.k <> ''
    UNION ALL
    SELECT p.k, p.units, c.id, c.priority, c.scheduled_at, c.meta
    FROM open_parts AS p
    CROSS JOIN LATERAL (
        SELECT * FROM keyless ORDER BY priority, scheduled_at, id LIMIT least(p.jobs, p.share + 1)
    ) AS c
    WHERE p.k = ''
),
weighed AS (
    SELECT o.*,
           row_number() OVER (PARTITION BY o.k ORDER BY o.priority, o.scheduled_at, o.id) AS round,
           sum(CASE WHEN %(rate_limit)s::integer IS NULL THEN 1
                    WHEN jsonb_typeof(o.meta -> 'weight') = 'number'
                    THEN least(greatest(floor((o.meta ->> 'weight')::numeric), 1), %(rate_limit)s)::integer
                    ELSE 1 END)
               OVER (PARTITION BY o.k ORDER BY o.priority, o.scheduled_at, o.id) AS total
    FROM offered AS o
),
chosen AS (
    SELECT w.id, w.k, w.total - coalesce(lag(w.total) OVER (PARTITION BY w.k ORDER BY w.round), 0) AS weight
    FROM weighed AS w
    WHERE w.total <= w.units
    ORDER BY w.round, w.priority, w.scheduled_at, w.id
    LIMIT %(demand)s
),
claimed AS (
    -- Locked only now, and only the jobs taken: a job another client holds is skipped.
    SELECT j.id, chosen.k, chosen.weight
    FROM {jobs} AS j
    JOIN chosen ON chosen.id = j.id
    WHERE j.state = 'available'
    FOR UPDATE OF j SKIP LOCKED
),
fetched AS (
    UPDATE {jobs} AS j
    SET state = 'executing',
        attempt = j.attempt + 1,
        attempted_at = (SELECT t FROM clock),
        attempted_by = ARRAY[%(node)s::text, %(producer)s::text]
    FROM claimed
    WHERE j.id = claimed.id
    RETURNING j.id, j.state, j.queue, j.worker, j.args, j.meta, j.tags, j.errors, j.attempt,
              j.max_attempts, j.priority, j.inserted_at, j.scheduled_at, j.attempted_at,
              j.attempted_by, j.completed_at, j.cancelled_at, j.discarded_at
),
stamped AS (
    UPDATE {limit_state} AS s
    SET last_start = clock.t
    FROM clock
    WHERE s.queue = %(queue)s AND s.partition_key = '' AND EXISTS (SELECT 1 FROM claimed)
    RETURNING 1
),
counted AS (
    -- Each partition's units started in this slot, added to its window (older slots dropped).
    INSERT INTO {limit_state} AS s (queue, partition_key, last_start, slots, units)
    SELECT %(queue)s, '=' || c.k, clock.t, ARRAY[clock.cur], ARRAY[sum(c.weight)::integer]
    FROM claimed AS c, clock
    WHERE %(rate_limit)s::integer IS NOT NULL
    GROUP BY c.k, clock.t, clock.cur
    ON CONFLICT (queue, partition_key) DO UPDATE
    SET last_start = excluded.last_start,
        (slots, units) = (
            SELECT coalesce(array_agg(k.s ORDER BY k.s), '{{}}'), coalesce(array_agg(k.u ORDER BY k.s), '{{}}')
            FROM (SELECT o.s, sum(o.u)::integer AS u
                  FROM (SELECT * FROM unnest(s.slots, s.units) AS x(s, u)
                        UNION ALL
                        SELECT excluded.slots[1], excluded.units[1]) AS o(s, u)
                  WHERE o.s >= excluded.slots[1] - %(slots)s
                  GROUP BY o.s) AS k)
    RETURNING 1
),
forgotten AS (
    -- Windows that have slid past every slot they hold: the partition starts afresh.
    DELETE FROM {limit_state} AS s
    USING clock
    WHERE s.ctid IN (
        SELECT x.ctid FROM {limit_state} AS x
        WHERE x.queue = %(queue)s AND x.partition_key LIKE '=%%'
          AND x.last_start < clock.t - make_interval(secs => 2 * coalesce(%(rate_period)s::float8, 0))
          AND substr(x.partition_key, 2) NOT IN (SELECT k FROM claimed)
        LIMIT 100
        FOR UPDATE SKIP LOCKED)
    RETURNING 1
),
waiting AS (
    SELECT EXISTS (SELECT 1 FROM keyed) OR EXISTS (SELECT 1 FROM keyless) AS any_left,
           (SELECT count(*) FROM claimed) AS taken
)
SELECT (SELECT landed FROM acks_landed) AS acked,
       CASE WHEN (SELECT any_left AND taken < %(demand)s FROM waiting) THEN 0 END::float8 AS retry_in,
       -- Always run after lock_limits.sql, so never contended (the column fetch_limited.sql has).
       false AS contended,
       f.*
FROM commit_mode
LEFT JOIN fetched AS f ON true
