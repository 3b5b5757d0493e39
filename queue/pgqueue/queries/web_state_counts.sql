-- Jobs per queue and state for the dashboard. Unfinished states are counted exactly (their
-- partial indexes keep them small). A finished state grows without bound until pruned: it is
-- counted per queue only while it holds fewer than %(exact_up_to)s rows; beyond that one row with
-- a NULL queue says "at least %(exact_up_to)s", so the page stays fast with millions of jobs.
WITH live AS (
    SELECT queue, state::text AS state, count(*) AS n, true AS exact
    FROM {jobs}
    WHERE state IN ('available', 'scheduled', 'executing', 'retryable')
    GROUP BY queue, state
),
finished_sample AS (
    SELECT s.state, (
        SELECT count(*) FROM (
            SELECT 1 FROM {jobs} AS j WHERE j.state = s.state::{job_state} LIMIT %(exact_up_to)s
        ) AS capped
    ) AS n
    FROM unnest(ARRAY['completed', 'cancelled', 'discarded']::text[]) AS s(state)
),
finished AS (
    SELECT c.queue, f.state, c.n, true AS exact
    FROM finished_sample AS f
    CROSS JOIN LATERAL (
        SELECT j.queue, count(*) AS n FROM {jobs} AS j WHERE j.state = f.state::{job_state} GROUP BY j.queue
    ) AS c
    WHERE f.n < %(exact_up_to)s
)
SELECT queue, state, n, exact FROM live
UNION ALL
SELECT queue, state, n, exact FROM finished
UNION ALL
SELECT NULL, f.state, f.n, false FROM finished_sample AS f WHERE f.n >= %(exact_up_to)s
ORDER BY 1 NULLS LAST, 2
