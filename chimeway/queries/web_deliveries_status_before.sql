-- The delivery list for one status: the same page, read from chimeway_deliveries_status_recent_idx
-- (a statement of its own, so the status is always an index condition, never a maybe-filter).
SELECT d.id, d.status, d.channel, d.suppression_reason, d.inserted_at, d.updated_at,
       n.event_id, e.notification_key, n.recipient_identity,
       (SELECT count(*) FROM {attempts} AS a WHERE a.delivery_id = d.id) AS attempts
FROM {deliveries} AS d
JOIN {notifications} AS n ON n.id = d.notification_id
JOIN {events} AS e ON e.id = n.event_id
WHERE d.status = %(status)s
  AND (%(channel)s::text IS NULL OR d.channel = %(channel)s)
  AND (d.inserted_at, d.id) < (%(cursor_at)s::timestamptz, %(cursor_id)s::uuid)
ORDER BY d.status DESC, d.inserted_at DESC, d.id DESC
LIMIT %(limit)s
