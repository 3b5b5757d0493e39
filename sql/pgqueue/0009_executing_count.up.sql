-- pgqueue 0009: the limited fetch counts a queue's executing jobs by the same plan whatever the
-- statistics say.
-- Applied with search_path set to the target schema, so every name here lands in that schema.
--
-- The count (queries/fetch_limited.sql, CTE `running`) walks the executing index in attempted_at
-- order and stops at the global limit: a plain index scan skips the entries of jobs that stopped
-- executing since the last vacuum once it has seen them dead. Without statistics (a fresh table,
-- autovacuum disabled or behind) the planner takes a bitmap scan instead, which never marks an entry
-- dead and visits the heap for every one of them on every fetch: the count's cost follows the
-- churn since the last vacuum, not the limit. The producer's locked path ran with bitmap scans off
-- (queries/limited_plan.sql); its one-statement path, the common one, did not. The settings below
-- hold only while this function runs, so the ordered walk is the one plan it can take.
--
-- Measured on a limited queue of 200,000 available jobs, vacuumed, never analyzed, autovacuum off,
-- 50 jobs executing on another node; fetches of 10 under a global limit of 100, one statement
-- each, rolled back; 21 interleaved rounds of 10 fetches per side on a shared 2-core machine.
-- Median fetch, before / after: 3.5 / 2.7 ms with 12,000 jobs claimed and finished since the last
-- vacuum (per-round ratio 1.3x, range 1.1-1.4), 6.2 / 2.7 ms with 60,000 (2.3x, 1.6-2.7), and
-- 2.53 / 2.48 ms with none (1.0x: the function call costs nothing measurable). With 12,000, the
-- count alone touched 556 buffers per fetch before (522 heap pages); after, 66: the index pages
-- that hold the dead entries (a few hundred entries each; its first walk marked them dead) and
-- the live jobs' heap pages.
--
-- STABLE, not VOLATILE: a stable function reads with the snapshot of the statement that calls it,
-- as the inline count did. The fetch's exactness rests on that: the count must come from the same
-- snapshot as the admission row the statement compares with its newest version (see
-- fetch_limited.sql). It does not see the acks of its own statement either (they are the same
-- command), so the caller passes their ids to leave out.

CREATE FUNCTION pgqueue_executing_count(count_queue text, producer text, excluded bigint[], lim integer)
RETURNS integer
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
SET enable_sort = off
SET enable_bitmapscan = off
SET enable_seqscan = off
AS $$
BEGIN
    RETURN (SELECT count(*)
            FROM (SELECT 1
                  FROM jobs AS j
                  WHERE j.state = 'executing' AND j.queue = count_queue
                    AND j.attempted_by[2] IS DISTINCT FROM producer
                    AND NOT (j.id = ANY (coalesce(excluded, '{}')))
                  ORDER BY j.attempted_at
                  LIMIT lim) AS e);
END
$$;

COMMENT ON FUNCTION pgqueue_executing_count(text, text, bigint[], integer) IS
    'pgqueue: executing jobs of a queue claimed by other producers, less excluded ids, counted up to lim';
