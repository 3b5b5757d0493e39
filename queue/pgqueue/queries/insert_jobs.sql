-- Insert many jobs in one round trip: the batch arrives as one JSON array of rows (encoded in C
-- by orjson, parsed once by PostgreSQL), unpacked with json_to_recordset.
-- Unique jobs that collide with a job holding the same key (in a state the key covers) are
-- skipped here by the partial unique index and resolved by the caller (see insert.py), so
-- concurrent transactions can never both insert one. Rows go in in input order (ORDER BY o), so
-- their identity ids ascend in input order, which is how the caller matches them back; only the
-- columns the database decides are returned (the caller has the rest).
-- Waking the queues rides along: one pg_notify per queue that received an available job,
-- delivered by PostgreSQL only if and when the caller's transaction commits.
WITH input AS (
    SELECT *
    FROM json_to_recordset(%(rows)s::json) AS i(
        o integer, w text, q text, a jsonb, m jsonb, t text[], x integer, p smallint,
        s timestamptz, d float8, k text, u text[]
    )
),
inserted AS (
    INSERT INTO {jobs} AS j (
        state, worker, queue, args, meta, tags, max_attempts, priority, scheduled_at,
        unique_key, unique_states
    )
    SELECT
        CASE WHEN i.s IS NULL AND i.d IS NULL THEN 'available' ELSE 'scheduled' END::{job_state},
        i.w, i.q, i.a, i.m, coalesce(i.t, ARRAY[]::text[]), i.x, i.p,
        coalesce(i.s, now() + make_interval(secs => coalesce(i.d, 0))),
        decode(i.k, 'hex'), i.u::{job_state}[]
    FROM input AS i
    ORDER BY i.o
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state = ANY (unique_states) DO NOTHING
    RETURNING j.id, j.state, j.queue, j.inserted_at, j.scheduled_at, j.unique_key
),
woken AS (
    SELECT count(pg_notify(%(channel)s, json_build_object('queue', q.queue)::text)) AS n
    FROM (SELECT DISTINCT queue FROM inserted WHERE state = 'available' AND %(notify)s) AS q
)
SELECT inserted.id, inserted.state, inserted.inserted_at, inserted.scheduled_at, inserted.unique_key
FROM inserted, woken
