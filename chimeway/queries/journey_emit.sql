-- Journeys: plan one step's delivery, as the fan-out plans one: pending, or suppressed at
-- planning when the recipient turned this channel (or the category) off. The planner's key
-- (notification, channel) makes a second emission a no-op that returns nothing. The delivery
-- keeps the template it is rendered with and, when it has one, the content it is rendered from.
INSERT INTO {deliveries}
    (id, notification_id, channel, status, suppression_reason, metadata, actor_id,
     render_key, render_version, render_data, journey_run_id, journey_step)
SELECT %(id)s, n.id, %(channel)s,
       CASE WHEN v.reason IS NULL THEN 'pending' ELSE 'suppressed' END, v.reason,
       jsonb_strip_nulls(jsonb_build_object(
           'notification_key', e.notification_key, 'event_id', e.id::text,
           'correlation_id', e.correlation_id, 'journey_step', %(step)s::int,
           'policy_checkpoint', CASE WHEN v.reason IS NOT NULL THEN 'planning' END)),
       n.recipient_identity, %(render_key)s, %(render_version)s,
       CASE WHEN %(render_key)s::text IS NULL THEN '{{}}'::jsonb ELSE n.metadata END,
       %(run_id)s, %(step)s
FROM {notifications} AS n
JOIN {events} AS e ON e.id = n.event_id
LEFT JOIN {notification_preferences} AS np
    ON np.recipient_id = n.recipient_identity
    AND np.notification_key = e.notification_key
    AND np.channel = %(channel)s
LEFT JOIN {category_preferences} AS cp
    ON cp.recipient_id = n.recipient_identity
    AND cp.notification_category = n.category
CROSS JOIN LATERAL (
    SELECT CASE WHEN np.enabled IS FALSE THEN 'channel_disabled'
                WHEN cp.enabled IS FALSE THEN 'category_disabled' END AS reason
) AS v
WHERE n.id = (SELECT notification_id FROM {journey_runs} WHERE id = %(run_id)s)
ON CONFLICT (notification_id, channel) DO NOTHING
RETURNING id, status, suppression_reason
