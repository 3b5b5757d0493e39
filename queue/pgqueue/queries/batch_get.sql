-- A batch's progress, as counted by the acks that finished its members.
SELECT id, total, completed, discarded, cancelled, meta, inserted_at, finished_at
FROM {batches}
WHERE id = %(id)s
