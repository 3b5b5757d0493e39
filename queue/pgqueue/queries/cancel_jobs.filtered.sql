-- Cancel the matching jobs that haven't finished. A job that is executing gets an error entry
-- saying so, and the node running it is told (on the signal channel, at commit) to stop it; its
-- own late ack is then rejected by the fence because the job is no longer `executing`.
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
    RETURNING j.id, t.previous_state
),
signalled AS (
    SELECT count(pg_notify(%(channel)s, json_build_object('action', 'pkill', 'job_id', c.id)::text)) AS n
    FROM cancelled AS c
    WHERE c.previous_state = 'executing'
)
SELECT cancelled.id FROM cancelled, signalled
