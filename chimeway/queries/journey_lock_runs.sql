-- Journeys: runs, locked for their moves (every move of a run is made in a transaction holding
-- this lock, so two workers advancing it serialise and the second finds the move made), in id
-- order (as signals lock them: no deadlock), with each run's definition's steps, whether its
-- notification was read, the trigger params (for wait_until), the current step's delivery if it
-- has one, and the database's clock.
SELECT r.id, r.state, r.current_step, r.outcomes::text,
       extract(epoch FROM r.due_at - now())::float8 AS wait,
       def.steps::text, def.stop_when_read, n.read_at IS NOT NULL AS read, e.payload::text,
       d.id, d.status, d.suppression_reason, now()
FROM {journey_runs} AS r
JOIN {journey_definitions} AS def ON def.id = r.definition_id
JOIN {notifications} AS n ON n.id = r.notification_id
JOIN {events} AS e ON e.id = n.event_id
LEFT JOIN {deliveries} AS d ON d.journey_run_id = r.id AND d.journey_step = r.current_step
WHERE r.id = ANY (%(ids)s::uuid[])
ORDER BY r.id
FOR UPDATE OF r
