-- The producers that heartbeated recently, for status and check_queue across nodes.
SELECT uuid, node, queue, meta, started_at, updated_at
FROM {producers}
WHERE updated_at > now() - make_interval(secs => %(window)s)
ORDER BY queue, node
