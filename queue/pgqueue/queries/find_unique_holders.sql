-- The jobs currently holding some unique keys, in a state their key covers. Not locked: a
-- replace locks the one row it updates, and acks of executing holders must not wait on inserts.
SELECT id, state, queue, worker, args, meta, tags, errors, attempt, max_attempts, priority,
       inserted_at, scheduled_at, attempted_at, attempted_by, completed_at, cancelled_at,
       discarded_at, unique_key, now() AS db_now
FROM {jobs}
WHERE unique_key = ANY (%(unique_keys)s::bytea[]) AND state = ANY (unique_states)
