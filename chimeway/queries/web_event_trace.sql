-- An event's trace for the dashboard: each notification it planned and each delivery of those,
-- with the attempts made so far and the last one's outcome. Content and payload stay out.
SELECT e.notification_key, e.correlation_id, e.inserted_at,
       n.id AS notification_id, n.recipient_identity,
       d.id AS delivery_id, d.channel, d.status, d.suppression_reason, d.updated_at,
       (SELECT count(*) FROM {attempts} AS a WHERE a.delivery_id = d.id) AS attempts,
       (SELECT a.outcome FROM {attempts} AS a WHERE a.delivery_id = d.id
        ORDER BY a.attempt_number DESC LIMIT 1) AS last_outcome
FROM {events} AS e
LEFT JOIN {notifications} AS n ON n.event_id = e.id
LEFT JOIN {deliveries} AS d ON d.notification_id = n.id
WHERE e.id = %(event_id)s
ORDER BY n.inserted_at, n.id, d.inserted_at, d.id
LIMIT 1000
