-- Jobs per queue and state at a cost bounded whatever the table's size, shared by the dashboard
-- (web_state_counts.sql) and the metrics scrape (metrics_queue.sql) where they write {{state_counts_part}}
-- (a list of CTEs, the last one `state_counts`: rows of queue, state, n, exact).
-- Each state's jobs are read from jobs_state_id_idx, index-only (the queue rides along), and at
-- most %(exact_up_to)s + 1 of them for a finished state, %(live_exact_up_to)s + 1 for an unfinished
-- one, in one pass that also groups them by queue. A state within its bound is counted exactly, per
-- queue. A larger one is one row with a NULL queue, exact false and an estimate: the table's
-- reltuples times the state's share in the planner's statistics (both kept by (auto)vacuum and
-- analyze), never below the bound. So a page with millions of finished jobs reads ~10,000 index
-- entries per finished state, not millions, and says "≈" where it did not count.
state_bounds AS (
    SELECT s.state,
           CASE WHEN s.state IN ('completed', 'cancelled', 'discarded')
                THEN %(exact_up_to)s::integer ELSE %(live_exact_up_to)s::integer END AS bound
    FROM unnest(enum_range(NULL::{job_state})::text[]) AS s(state)
),
state_sampled AS (
    SELECT b.state, b.bound, c.queue, c.n, sum(c.n) OVER (PARTITION BY b.state) AS total
    FROM state_bounds AS b
    CROSS JOIN LATERAL (
        SELECT h.queue, count(*) AS n
        FROM (SELECT j.queue FROM {jobs} AS j WHERE j.state = b.state::{job_state} LIMIT b.bound + 1) AS h
        GROUP BY h.queue
    ) AS c
),
state_estimates AS (
    SELECT m.state, (m.share * greatest(c.reltuples, 0))::bigint AS n
    FROM pg_class AS c
    JOIN pg_namespace AS ns ON ns.oid = c.relnamespace
    JOIN pg_stats AS p ON p.schemaname = ns.nspname AND p.tablename = c.relname AND p.attname = 'state'
    CROSS JOIN LATERAL unnest(p.most_common_vals::text::text[], p.most_common_freqs) AS m(state, share)
    WHERE c.oid = {jobs_name}::regclass
),
state_counts AS (
    SELECT s.queue, s.state, s.n, true AS exact
    FROM state_sampled AS s
    WHERE s.total <= s.bound
    UNION ALL
    SELECT DISTINCT NULL::text, s.state, greatest(s.bound, coalesce(e.n, 0)), false
    FROM state_sampled AS s
    LEFT JOIN state_estimates AS e ON e.state = s.state
    WHERE s.total > s.bound
)
