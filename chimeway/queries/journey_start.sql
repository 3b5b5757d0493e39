-- Journeys: one run per notification of a trigger, waiting for its first step, and the first
-- line of each run's transition log; set-wise, whatever the number of recipients. Run ids come
-- from the client, so the first step's scheduled jobs can name them before this runs.
WITH runs AS (
    INSERT INTO {journey_runs}
        (id, notification_id, definition_id, recipient_identity, state, current_step, due_at)
    SELECT r.id, r.notification_id, %(definition_id)s, r.recipient, 'waiting', %(step)s,
           now() + make_interval(secs => %(due_in)s)
    FROM unnest(%(ids)s::uuid[], %(notification_ids)s::uuid[], %(recipients)s::text[])
        AS r (id, notification_id, recipient)
    RETURNING id
)
INSERT INTO {journey_transitions} (run_id, step, from_state, to_state, reason)
SELECT id, %(step)s, NULL, 'waiting', 'started' FROM runs
