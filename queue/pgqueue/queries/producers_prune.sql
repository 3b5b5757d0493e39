-- Forget producers that have been silent far longer than any rescue window.
DELETE FROM {producers} WHERE updated_at < now() - make_interval(secs => %(older_than)s)
