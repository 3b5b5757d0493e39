-- Lock one job for an update; skipped (no row) when another transaction holds it.
SELECT id, state FROM {jobs} WHERE id = %(id)s FOR UPDATE SKIP LOCKED
