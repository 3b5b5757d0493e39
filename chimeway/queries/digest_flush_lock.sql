-- chimeway.digests.flush, per chunk, first statement: lock the next pending buckets of the window
-- the job's bucket belongs to (same rule, same end), once that window has ended. FOR UPDATE (not
-- SKIP LOCKED): a concurrent flusher's chunk is waited for, then re-checked and dropped once
-- emitted, so a bucket is emitted once and none is skipped; a fan-out still counting members
-- into a bucket is waited for too, and its members are in the digest. The lock order (recipient,
-- channel, group) is the order digest_hold.sql upserts buckets in, so the two can't deadlock.
-- The emission is a separate statement so that its snapshot sees every member committed before
-- these locks were granted.
SELECT b.id
FROM {digest_buckets} AS own
JOIN {digest_buckets} AS b
    ON b.rule_id = own.rule_id AND b.window_ends_at = own.window_ends_at
WHERE own.id = %(bucket_id)s
  AND b.flush_state = 'pending'
  AND b.window_ends_at <= now()
ORDER BY b.recipient_id, b.channel, b.grouping_value
LIMIT %(limit)s
FOR UPDATE OF b
