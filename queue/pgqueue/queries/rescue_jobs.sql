-- The lifeline: executing jobs whose producer stopped heartbeating (or that have run longer than
-- the rescue_after backstop) go back to `available`, or to `discarded` when out of attempts.
-- attempted_by[2] is the uuid of the producer that claimed the job. A producer registers before it
-- fetches, so a job whose producer row is missing or stale is an orphan. meta.rescued counts it.
-- The pick is pgqueue_orphans (migration 0007): the executing index walked in order, whatever the
-- planner's statistics say.
WITH orphans AS (
    SELECT id FROM {orphans}(%(window)s::float8, %(rescue_after)s::float8, %(limit)s::integer) AS id
),
rescued AS (
    UPDATE {jobs} AS j
    SET state = CASE WHEN j.attempt < j.max_attempts THEN 'available' ELSE 'discarded' END::{job_state},
        discarded_at = CASE WHEN j.attempt < j.max_attempts THEN j.discarded_at ELSE now() END,
        errors = CASE WHEN j.attempt < j.max_attempts THEN j.errors
                      ELSE j.errors || jsonb_build_array(jsonb_build_object(
                          'attempt', j.attempt, 'at', now(),
                          'error', 'rescued after its node stopped heartbeating, with no attempts left'))
                 END,
        -- Guarded: a row written by hand may carry a meta that is not an object, or a rescued count
        -- that is not a number; either would fail this statement, and with it every rescue.
        meta = CASE WHEN jsonb_typeof(j.meta) = 'object'
                    THEN jsonb_set(j.meta, ARRAY['rescued'], to_jsonb(
                        CASE WHEN jsonb_typeof(j.meta -> 'rescued') = 'number'
                             THEN floor((j.meta ->> 'rescued')::numeric) ELSE 0 END + 1))
                    ELSE j.meta END
    FROM orphans
    WHERE j.id = orphans.id
    RETURNING j.id, j.queue, j.state, j.batch_id, j.awaited
),
-- Members discarded here count towards their batches, as acks do (batch_acks.part.sql).
acked AS (
    SELECT id, state, batch_id FROM rescued WHERE state = 'discarded'
),
{batch_acks_part}
woken AS (
    SELECT count(pg_notify(%(channel)s, json_build_object('queue', q.queue)::text)) AS n
    FROM (SELECT DISTINCT queue FROM rescued WHERE state = 'available') AS q
),
-- Waiters of the jobs discarded here (pgqueue.wait) are woken at commit.
results_woken AS (
    SELECT CASE WHEN count(*) FILTER (WHERE awaited) > 0
                THEN pg_notify({results_channel}, CASE
                    WHEN count(*) FILTER (WHERE awaited) <= 300
                    THEN json_build_object('ids', array_agg(id) FILTER (WHERE awaited))::text
                    ELSE '{{}}' END) END AS n
    FROM rescued WHERE state = 'discarded'
)
SELECT rescued.id, rescued.queue, rescued.state::text FROM rescued, woken, results_woken
