-- The first statement of a limited queue's fetch transaction: take (creating it if need be) the
-- queue's admission row and hold its lock until commit. Admissions to one queue are serialized
-- across nodes by this row lock, and the fetch that follows in the same transaction reads with a
-- snapshot taken after every earlier admission committed: that is what makes the limits exact.
-- (Inside one statement the count of executing jobs would come from a snapshot taken before the
-- lock wait, blind to the claims committed meanwhile.)
INSERT INTO {limit_state} AS s (queue, partition_key)
VALUES (%(queue)s, '')
ON CONFLICT (queue, partition_key) DO UPDATE SET last_start = s.last_start
RETURNING s.last_start
