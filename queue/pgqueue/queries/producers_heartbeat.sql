-- Every live producer of this node says it is alive, in one statement. An upsert, so a producer
-- whose row was removed (e.g. by another node's cleanup during a long outage) registers again.
INSERT INTO {producers} AS p (uuid, node, queue, meta)
SELECT u.uuid, %(node)s, u.queue, u.meta
FROM unnest(%(uuid)s::uuid[], %(queue)s::text[], %(meta)s::jsonb[]) AS u(uuid, queue, meta)
ON CONFLICT (uuid) DO UPDATE SET updated_at = now(), meta = excluded.meta
