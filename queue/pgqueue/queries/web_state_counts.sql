-- Jobs per queue and state for the dashboard, exact up to a bound per state and estimated beyond
-- it (see state_counts.part.sql): rows of (queue, state, n, exact), a NULL queue for an estimate.
WITH {state_counts_part}
SELECT queue, state, n, exact FROM state_counts
ORDER BY 1 NULLS LAST, 2
