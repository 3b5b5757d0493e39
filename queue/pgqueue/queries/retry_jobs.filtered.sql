-- Make the matching jobs available again now, unless they are available or executing already.
-- A job out of attempts gets one more. A finished unique job comes back into its unique states;
-- if another job holds its key meanwhile, it gives the key up rather than violate the index.
WITH target AS (
    SELECT id
    FROM {jobs}
    WHERE ({where}) AND state NOT IN ('available', 'executing')
    FOR UPDATE
)
UPDATE {jobs} AS j
SET state = 'available',
    scheduled_at = now(),
    max_attempts = greatest(j.max_attempts, j.attempt + 1),
    completed_at = NULL,
    cancelled_at = NULL,
    discarded_at = NULL,
    unique_key = CASE WHEN EXISTS (SELECT 1 FROM {jobs} AS o
                                   WHERE o.unique_key = j.unique_key AND o.id <> j.id
                                     AND o.state = ANY (o.unique_states))
                      THEN NULL ELSE j.unique_key END,
    unique_states = CASE WHEN EXISTS (SELECT 1 FROM {jobs} AS o
                                      WHERE o.unique_key = j.unique_key AND o.id <> j.id
                                        AND o.state = ANY (o.unique_states))
                         THEN NULL ELSE j.unique_states END
FROM target AS t
WHERE j.id = t.id
RETURNING j.id
