-- Journeys: an application event for one recipient. Their runs still going whose definition lists
-- the event in end_on end; those waiting whose definition lists it in advance_on have their wait
-- end now (the caller schedules their step's job for now). Locked in id order, so two signals
-- can't deadlock; each move is logged.
WITH target AS (
    SELECT r.id, r.state, r.current_step, %(event)s = ANY (def.end_on) AS ends
    FROM {journey_runs} AS r
    JOIN {journey_definitions} AS def ON def.id = r.definition_id
    WHERE r.recipient_identity = %(recipient)s
      AND r.state IN ('waiting', 'sending')
      AND (%(event)s = ANY (def.end_on) OR (%(event)s = ANY (def.advance_on) AND r.state = 'waiting'))
    ORDER BY r.id
    FOR UPDATE OF r
),
moved AS (
    UPDATE {journey_runs} AS r
    SET state = CASE WHEN t.ends THEN 'ended' ELSE r.state END,
        terminal_reason = CASE WHEN t.ends THEN 'signal' END,
        due_at = CASE WHEN t.ends THEN r.due_at ELSE now() END,
        last_transition_at = now()
    FROM target AS t
    WHERE r.id = t.id
    RETURNING r.id, t.state AS from_state, r.state AS to_state, r.current_step, t.ends
),
logged AS (
    INSERT INTO {journey_transitions} (run_id, step, from_state, to_state, reason, context)
    SELECT id, current_step, from_state, to_state,
           CASE WHEN ends THEN 'signal_ended' ELSE 'signal_advanced' END,
           jsonb_build_object('event', %(event)s::text)
    FROM moved
)
SELECT id, current_step, ends FROM moved
