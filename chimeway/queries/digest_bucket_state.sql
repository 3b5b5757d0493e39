-- chimeway.digests.flush, when a flush locked nothing: is the job's bucket done, or is its window
-- still open (a job run early), and for how many seconds more.
SELECT flush_state, greatest(0, extract(epoch FROM window_ends_at - now()))::float8
FROM {digest_buckets}
WHERE id = %(bucket_id)s
