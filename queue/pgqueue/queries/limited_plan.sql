-- Sent first in a limited queue's fetch transaction (see producer.py), for that transaction only:
-- the count of executing jobs must walk the executing index in order, skipping the entries of
-- jobs that stopped executing since the last vacuum. A bitmap scan, which the planner may prefer
-- on its estimates, visits the heap for every one of them (measured: 28 ms per fetch after 12,000
-- claims, against well under 1 ms), so the claim's cost would follow the churn, not the limit.
SET LOCAL enable_bitmapscan = off
