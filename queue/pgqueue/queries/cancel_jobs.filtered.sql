-- Cancel the matching jobs that haven't finished. A job that is executing gets an error entry
-- saying so, and the nodes are told to stop it: a pkill row listing the executing ones goes into
-- the signals table and a notification carrying its id wakes them (both at commit). A node stops
-- a job only once it reads that the job is cancelled; the job's own late ack is then rejected by
-- the fence because the job is no longer `executing`.
WITH target AS (
    SELECT id, state AS previous_state
    FROM {jobs}
    WHERE ({where}) AND state NOT IN ('completed', 'discarded', 'cancelled')
    FOR UPDATE
),
cancelled AS (
    UPDATE {jobs} AS j
    SET state = 'cancelled',
        cancelled_at = now(),
        errors = CASE WHEN t.previous_state = 'executing'
                      THEN j.errors || jsonb_build_array(jsonb_build_object(
                          'attempt', j.attempt, 'at', now(), 'error', 'cancelled while executing'))
                      ELSE j.errors END
    FROM target AS t
    WHERE j.id = t.id
    RETURNING j.id, t.previous_state, j.state, j.batch_id, j.queue, j.awaited
),
-- Cancelled members count towards their batches, as acks do (batch_acks.part.sql reads `acked`).
acked AS (
    SELECT id, state, batch_id FROM cancelled
),
{batch_acks_part}
signal AS (
    INSERT INTO {signals} (action, params)
    SELECT 'pkill', jsonb_build_object('job_ids', jsonb_agg(c.id ORDER BY c.id))
    FROM cancelled AS c
    WHERE c.previous_state = 'executing'
    HAVING count(*) > 0
    RETURNING id
),
signalled AS (
    SELECT count(pg_notify(%(channel)s, json_build_object('id', s.id)::text)) AS n
    FROM signal AS s
),
-- Waiters of these jobs (pgqueue.wait) are woken at commit (batch callbacks wake their queues).
woken AS (
    SELECT CASE WHEN count(*) FILTER (WHERE awaited) > 0
                THEN pg_notify({results_channel}, CASE
                    WHEN count(*) FILTER (WHERE awaited) <= 300
                    THEN json_build_object('ids', array_agg(id) FILTER (WHERE awaited))::text
                    ELSE '{{}}' END) END AS results
    FROM cancelled
)
SELECT cancelled.id FROM cancelled, signalled, woken
