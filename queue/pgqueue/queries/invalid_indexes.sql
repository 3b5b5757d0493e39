-- pgqueue's indexes left invalid by an interrupted REINDEX CONCURRENTLY (to drop and rebuild).
SELECT c.relname
FROM pg_index AS i
JOIN pg_class AS c ON c.oid = i.indexrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND NOT i.indisvalid AND c.relname LIKE 'jobs%%'
