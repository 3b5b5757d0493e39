-- Forget signals every node has long read (run by the leader now and then).
DELETE FROM {signals}
WHERE inserted_at < now() - make_interval(secs => %(older_than)s)
