-- Journeys: a run, locked for one move (every move of a run is a transaction holding this lock,
-- so two workers advancing it serialise and the second finds the move made), with its
-- definition's steps, whether its notification was read, the trigger params (for wait_until),
-- the current step's delivery if it has one, and the database's clock.
SELECT r.state, r.current_step, r.outcomes::text,
       extract(epoch FROM r.due_at - now())::float8 AS wait,
       def.steps::text, def.stop_when_read, n.read_at IS NOT NULL AS read, e.payload::text,
       d.id, d.status, d.suppression_reason, now()
FROM {journey_runs} AS r
JOIN {journey_definitions} AS def ON def.id = r.definition_id
JOIN {notifications} AS n ON n.id = r.notification_id
JOIN {events} AS e ON e.id = n.event_id
LEFT JOIN {deliveries} AS d ON d.journey_run_id = r.id AND d.journey_step = r.current_step
WHERE r.id = %(run_id)s
FOR UPDATE OF r
