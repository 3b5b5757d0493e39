-- Journeys: one move of a locked run (journey_lock_run.sql) and its line in the transition log,
-- in one statement.
WITH moved AS (
    UPDATE {journey_runs}
    SET state = %(to_state)s, current_step = %(step)s, outcomes = %(outcomes)s::jsonb,
        due_at = now() + make_interval(secs => %(due_in)s), terminal_reason = %(terminal_reason)s,
        last_transition_at = now()
    WHERE id = %(run_id)s
    RETURNING id
)
INSERT INTO {journey_transitions} (run_id, step, delivery_id, from_state, to_state, reason, context)
SELECT id, %(log_step)s, %(delivery_id)s, %(from_state)s, %(to_state)s, %(reason)s, %(context)s::jsonb
FROM moved
