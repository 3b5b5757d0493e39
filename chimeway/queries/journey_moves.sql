-- Journeys: the moves of many locked runs (journey_lock_runs.sql) in one statement: each run's
-- row as its last move left it, and every move's line in the transition log, appended in the
-- order the moves were made.
WITH moved AS (
    UPDATE {journey_runs} AS r
    SET state = m.state, current_step = m.step, outcomes = m.outcomes::jsonb,
        due_at = now() + make_interval(secs => m.due_in), terminal_reason = m.terminal_reason,
        last_transition_at = now()
    FROM unnest(%(ids)s::uuid[], %(states)s::text[], %(steps)s::int[], %(outcomes)s::text[],
                %(due_in)s::float8[], %(terminal_reasons)s::text[])
        AS m (id, state, step, outcomes, due_in, terminal_reason)
    WHERE r.id = m.id
    RETURNING r.id
)
INSERT INTO {journey_transitions} (run_id, step, delivery_id, from_state, to_state, reason, context)
SELECT t.run_id, t.step, t.delivery_id, t.from_state, t.to_state, t.reason, t.context::jsonb
FROM unnest(%(t_run_ids)s::uuid[], %(t_steps)s::int[], %(t_delivery_ids)s::uuid[],
            %(t_from)s::text[], %(t_to)s::text[], %(t_reasons)s::text[], %(t_contexts)s::text[])
    WITH ORDINALITY AS t (run_id, step, delivery_id, from_state, to_state, reason, context, ord)
ORDER BY t.ord
