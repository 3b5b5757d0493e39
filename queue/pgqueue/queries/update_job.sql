-- Change a job's editable fields; a NULL flag leaves the column as it is. A new scheduled_at
-- makes a waiting job `scheduled`, so the stager makes it available when it is due.
UPDATE {jobs} SET
    args = CASE WHEN %(set_args)s THEN %(args)s::jsonb ELSE args END,
    max_attempts = CASE WHEN %(set_max_attempts)s THEN %(max_attempts)s::integer ELSE max_attempts END,
    meta = CASE WHEN %(set_meta)s THEN %(meta)s::jsonb ELSE meta END,
    priority = CASE WHEN %(set_priority)s THEN %(priority)s::smallint ELSE priority END,
    queue = CASE WHEN %(set_queue)s THEN %(queue)s::text ELSE queue END,
    scheduled_at = CASE WHEN %(set_scheduled_at)s THEN %(scheduled_at)s::timestamptz ELSE scheduled_at END,
    state = CASE WHEN %(set_scheduled_at)s AND state IN ('available', 'scheduled', 'retryable')
                 THEN 'scheduled'::{job_state} ELSE state END,
    tags = CASE WHEN %(set_tags)s THEN ARRAY(SELECT jsonb_array_elements_text(%(tags)s::jsonb)) ELSE tags END,
    worker = CASE WHEN %(set_worker)s THEN %(worker)s::text ELSE worker END
WHERE id = %(id)s
RETURNING id, state, queue, worker, args, meta, tags, errors, attempt, max_attempts, priority,
          inserted_at, scheduled_at, attempted_at, attempted_by, completed_at, cancelled_at,
          discarded_at
