-- The dashboard's batches page: the newest batches first, with their counts (by primary key).
SELECT id, total, completed, discarded, cancelled, meta, inserted_at, finished_at
FROM {batches}
ORDER BY id DESC
LIMIT %(limit)s
