-- The schema in which chimeway's unqualified table names resolve on this connection (its
-- search_path), for a session that maps no schema: the plain statements name it explicitly.
SELECT n.nspname
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass('chimeway_events')
