-- The first statement of a limited queue's fetch transaction: lock the queue's admission row until
-- commit (creating it the first time). Admissions to one queue are serialized across nodes by this
-- row lock, and the fetch that follows in the same transaction reads with a snapshot taken after
-- every earlier admission committed: that is what makes the limits exact. (Inside one statement
-- the count of executing jobs would come from a snapshot taken before the lock wait, blind to the
-- claims committed meanwhile.) A lock writes no new row version, so a queue polled often while a
-- limit holds it back does not churn its row; the first insert, if two nodes race, makes the
-- second wait for the first's commit just the same.
WITH created AS (
    INSERT INTO {limit_state} (queue, partition_key)
    VALUES (%(queue)s, '')
    ON CONFLICT (queue, partition_key) DO NOTHING
    RETURNING last_start
),
locked AS (
    SELECT s.last_start
    FROM {limit_state} AS s
    WHERE s.queue = %(queue)s AND s.partition_key = ''
    FOR UPDATE
)
SELECT last_start FROM created
UNION ALL
SELECT last_start FROM locked
