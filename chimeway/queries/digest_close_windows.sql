-- chimeway.digests.close_windows: end a rule's open windows now (an operator sending the digests
-- early, or a demo). Each pending bucket's window ends now, so the flush takes it, and its flush
-- job becomes due; the stager makes it available within its interval. Later deliveries the rule
-- matches go to new buckets. Flush jobs are found by queue and their args' bucket id; the queue's
-- scheduled jobs are few (one per open bucket), so the pass is short.
WITH closed AS (
    UPDATE {digest_buckets} AS b
    SET window_ends_at = now()
    FROM {digest_rules} AS r
    WHERE r.id = b.rule_id AND r.rule_key = %(rule_key)s
      AND b.flush_state = 'pending' AND b.window_ends_at > now()
    RETURNING b.id
),
due AS (
    UPDATE {jobs} AS j
    SET scheduled_at = now()
    FROM closed AS c
    WHERE j.queue = %(queue)s AND j.state = 'scheduled' AND j.args ->> 'bucket_id' = c.id::text
    RETURNING j.id
)
SELECT (SELECT count(*) FROM closed), (SELECT count(*) FROM due)
