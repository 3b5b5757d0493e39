-- One event's story for `python -m chimeway trace`: the event, its first %(limit)s notifications
-- (oldest first), each one's deliveries and their attempts, as flat rows (LEFT JOINs, so an event
-- without notifications, or a delivery without attempts, still shows). The CTE bounds the
-- notifications before the joins multiply them.
WITH picked AS (
    SELECT n.id, n.recipient_identity, n.read_at, n.inserted_at
    FROM {notifications} n
    WHERE n.event_id = %(event_id)s
    ORDER BY n.inserted_at, n.id
    LIMIT %(limit)s
)
SELECT e.id, e.notification_key, e.correlation_id, e.inserted_at,
       p.id, p.recipient_identity, p.read_at,
       d.id, d.channel, d.status, d.suppression_reason,
       a.attempt_number, a.outcome, a.error_class, a.adapter, a.provider_message_id, a.inserted_at
FROM {events} e
LEFT JOIN picked p ON true
LEFT JOIN {deliveries} d ON d.notification_id = p.id
LEFT JOIN {attempts} a ON a.delivery_id = d.id
WHERE e.id = %(event_id)s
ORDER BY p.inserted_at, p.id, d.channel, a.attempt_number
