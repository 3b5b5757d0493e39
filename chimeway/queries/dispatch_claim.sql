-- The dispatch worker's first statement for a batch of jobs: load each delivery with what its
-- adapter needs (notification, event, attempts so far) and move the ready ones in the same
-- statement, so a batch of 100 jobs costs one round trip and one commit before the adapters run.
--
-- Per delivery, as the one-at-a-time contract does it (chimeway.dispatch module docstring):
-- * a delayed fallback whose notification was read meanwhile is suppressed (`already_read`,
--   policy_checkpoint "perform"), from any status that has not ended;
-- * a pending or failed one becomes `dispatched`; one already `dispatched` (its worker died after
--   the send) is sent again as it is, with no write;
-- * ended or deferred ones come back unchanged, and the caller short-circuits them.
-- The UPDATE is a compare-and-set on the status this statement read (re-checked against the
-- newest row version if a concurrent transaction changed it): a row it skips comes back with
-- `moved` NULL and a status that may be stale, and the caller re-reads it.
--
-- The metadata comes back as text and is decoded row by row by the caller, so one row that can't
-- be decoded fails its own delivery, not the batch.
WITH wanted AS (
    SELECT DISTINCT unnest(%(ids)s::uuid[]) AS id
),
current AS (
    SELECT d.id, d.status, d.orchestration_state, d.delay_fallback, d.notification_id, d.channel,
           n.read_at IS NOT NULL AS read, n.recipient_identity, n.metadata::text AS content,
           e.notification_key,
           (SELECT count(*) FROM {attempts} AS a WHERE a.delivery_id = d.id) AS attempts
    FROM wanted AS w
    JOIN {deliveries} AS d ON d.id = w.id
    JOIN {notifications} AS n ON n.id = d.notification_id
    JOIN {events} AS e ON e.id = n.event_id
),
moved AS (
    UPDATE {deliveries} AS d
    SET status = CASE WHEN c.delay_fallback AND c.read THEN 'suppressed' ELSE 'dispatched' END,
        suppression_reason = CASE WHEN c.delay_fallback AND c.read THEN 'already_read'
                                  ELSE d.suppression_reason END,
        metadata = CASE WHEN c.delay_fallback AND c.read
                        THEN d.metadata || '{{"policy_checkpoint": "perform"}}'::jsonb
                        ELSE d.metadata END,
        updated_at = now()
    FROM current AS c
    WHERE d.id = c.id
      AND d.status = c.status
      AND d.orchestration_state = 'ready'
      AND (c.status IN ('pending', 'failed') OR (c.status = 'dispatched' AND c.delay_fallback AND c.read))
    RETURNING d.id, d.status
)
SELECT c.id, c.status, m.status AS moved, c.orchestration_state, c.delay_fallback AND c.read AS read,
       c.notification_id, c.channel, c.recipient_identity, c.content, c.notification_key, c.attempts
FROM current AS c
LEFT JOIN moved AS m ON m.id = c.id
