-- The first of the two statements of a bulk insert by COPY (see insert.py): reserve one id per
-- job from the jobs table's identity sequence, return the transaction's now() and wake the queues.
-- The COPY that follows writes the ids itself, so the caller knows every job's id without
-- reading rows back, and leaves inserted_at to its default, now(), which is the now() returned
-- here (one transaction, one now()).
-- The n nextval calls feed one aggregate, so the array holds them in call order, ascending. When
-- no other transaction took an id meanwhile they are first..first+n-1 and only the first is
-- sent back; otherwise the whole array is (and the caller sorts it, to be sure). (generate_series in a select list streams its rows;
-- in FROM it would store them all first.) The sequence comes in as a column of that subquery:
-- PostgreSQL 13 assigns an aggregate whose argument holds a sub-select of an outer CTE to the
-- outer query, which then fails to group.
-- Waking: one pg_notify per queue given (those receiving an available job), with the channel and
-- payload of insert_jobs.sql. Notifications are delivered only when the transaction commits, and
-- a failed COPY aborts it, so sending them before the rows exist is safe.
-- A role allowed to INSERT jobs may still lack what COPY with explicit ids needs: nextval on the
-- sequence (an INSERT takes identity values without that privilege), INSERT on the id column,
-- or a table without row-level security (COPY FROM refuses it). Then nothing is reserved or
-- sent, `ok` is false, and the caller inserts with insert_jobs.sql instead.
WITH target AS (
    SELECT pg_get_serial_sequence({jobs_name}, 'id')::regclass AS sequence
),
usable AS (
    SELECT
        (has_sequence_privilege(t.sequence, 'USAGE') OR has_sequence_privilege(t.sequence, 'UPDATE'))
        AND has_column_privilege({jobs_name}, 'id', 'INSERT')
        AND NOT row_security_active({jobs_name}) AS ok
    FROM target AS t
),
reserved AS (
    SELECT array_agg(nextval(g.sequence)) AS ids
    FROM (
        SELECT t.sequence, generate_series(1, CASE WHEN u.ok THEN %(n)s::integer ELSE 0 END)
        FROM usable AS u, target AS t
    ) AS g
),
woken AS (
    SELECT count(pg_notify(%(channel)s, json_build_object('queue', q.queue)::text)) AS n
    FROM unnest(%(queues)s::text[]) AS q(queue), usable AS u
    WHERE u.ok
)
SELECT
    u.ok,
    now(),
    r.ids[1],
    CASE WHEN r.ids[%(n)s::integer] - r.ids[1] = %(n)s::integer - 1 THEN NULL ELSE r.ids END
FROM usable AS u, reserved AS r, woken
