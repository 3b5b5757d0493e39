-- Insert many jobs in one round trip: one array parameter per column, unnested into rows.
-- Unique jobs that collide with a job holding the same key (in a state the key covers) are
-- skipped here by the partial unique index and resolved by the caller (see insert.py), so
-- concurrent transactions can never both insert one. Rows go in in input order (ORDER BY ord),
-- so their identity ids ascend in input order, which is how the caller matches them back.
-- Waking the queues rides along: one pg_notify per queue that received an available job,
-- delivered by PostgreSQL only if and when the caller's transaction commits.
WITH input AS (
    SELECT *
    FROM unnest(
        %(worker)s::text[], %(queue)s::text[], %(args)s::jsonb[], %(meta)s::jsonb[], %(tags)s::jsonb[],
        %(max_attempts)s::integer[], %(priority)s::smallint[], %(scheduled_at)s::timestamptz[],
        %(schedule_in)s::float8[], %(unique_key)s::bytea[], %(unique_states)s::text[]
    ) WITH ORDINALITY AS i(worker, queue, args, meta, tags, max_attempts, priority, scheduled_at,
                           schedule_in, unique_key, unique_states, ord)
),
inserted AS (
    INSERT INTO {jobs} AS j (
        state, worker, queue, args, meta, tags, max_attempts, priority, scheduled_at,
        unique_key, unique_states
    )
    SELECT
        CASE WHEN i.scheduled_at IS NULL AND i.schedule_in IS NULL
             THEN 'available' ELSE 'scheduled' END::{job_state},
        i.worker, i.queue, i.args, i.meta,
        ARRAY(SELECT jsonb_array_elements_text(i.tags)),
        i.max_attempts, i.priority,
        coalesce(i.scheduled_at, now() + make_interval(secs => coalesce(i.schedule_in, 0))),
        i.unique_key, i.unique_states::{job_state}[]
    FROM input AS i
    ORDER BY i.ord
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state = ANY (unique_states) DO NOTHING
    RETURNING j.id, j.state, j.queue, j.worker, j.args, j.meta, j.tags, j.errors, j.attempt,
              j.max_attempts, j.priority, j.inserted_at, j.scheduled_at, j.attempted_at,
              j.attempted_by, j.completed_at, j.cancelled_at, j.discarded_at, j.unique_key
),
woken AS (
    SELECT count(pg_notify(%(channel)s, json_build_object('queue', q.queue)::text)) AS n
    FROM (SELECT DISTINCT queue FROM inserted WHERE state = 'available' AND %(notify)s) AS q
)
SELECT inserted.* FROM inserted, woken
