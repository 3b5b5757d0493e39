-- Insert one job that is not unique: what insert() runs for most calls. insert_jobs.sql does the
-- same for any batch, but unpacking a JSON document and the speculative insertion ON CONFLICT
-- needs cost a single job a quarter of its time; this is a plain INSERT.
-- As there: the state is decided by whether a time was given, the queue is woken in the same
-- transaction (delivered at commit, only for an available job), and only the columns the
-- database decides come back.
WITH inserted AS (
    INSERT INTO {jobs} (state, worker, queue, args, meta, tags, max_attempts, priority, scheduled_at)
    VALUES (
        CASE WHEN %(scheduled_at)s::timestamptz IS NULL AND %(schedule_in)s::float8 IS NULL
             THEN 'available' ELSE 'scheduled' END::{job_state},
        %(worker)s, %(queue)s, %(args)s::jsonb, %(meta)s::jsonb, %(tags)s::text[], %(max_attempts)s,
        %(priority)s,
        coalesce(%(scheduled_at)s::timestamptz,
                 now() + make_interval(secs => coalesce(%(schedule_in)s::float8, 0)))
    )
    RETURNING id, state, queue, inserted_at, scheduled_at
),
woken AS (
    SELECT count(pg_notify(%(channel)s, json_build_object('queue', i.queue)::text)) AS n
    FROM inserted AS i
    WHERE i.state = 'available' AND %(notify)s
)
SELECT inserted.id, inserted.state, inserted.inserted_at, inserted.scheduled_at
FROM inserted, woken
