-- Journeys: plan steps' deliveries, many runs' at once, as the fan-out plans them: pending, or
-- suppressed at planning when the recipient turned this channel (or the category) off. The
-- planner's key (notification, channel) makes a second emission a no-op that returns nothing.
-- Each delivery keeps the template it is rendered with and, when it has one, the content it is
-- rendered from.
INSERT INTO {deliveries}
    (id, notification_id, channel, status, suppression_reason, metadata, actor_id,
     render_key, render_version, render_data, journey_run_id, journey_step)
SELECT s.id, n.id, s.channel,
       CASE WHEN v.reason IS NULL THEN 'pending' ELSE 'suppressed' END, v.reason,
       jsonb_strip_nulls(jsonb_build_object(
           'notification_key', e.notification_key, 'event_id', e.id::text,
           'correlation_id', e.correlation_id, 'journey_step', s.step,
           'policy_checkpoint', CASE WHEN v.reason IS NOT NULL THEN 'planning' END)),
       n.recipient_identity, s.render_key, s.render_version,
       CASE WHEN s.render_key IS NULL THEN '{{}}'::jsonb ELSE n.metadata END,
       s.run_id, s.step
FROM unnest(%(ids)s::uuid[], %(run_ids)s::uuid[], %(steps)s::int[], %(channels)s::text[],
            %(render_keys)s::text[], %(render_versions)s::int[])
    AS s (id, run_id, step, channel, render_key, render_version)
JOIN {journey_runs} AS r ON r.id = s.run_id
JOIN {notifications} AS n ON n.id = r.notification_id
JOIN {events} AS e ON e.id = n.event_id
LEFT JOIN {notification_preferences} AS np
    ON np.recipient_id = n.recipient_identity
    AND np.notification_key = e.notification_key
    AND np.channel = s.channel
LEFT JOIN {category_preferences} AS cp
    ON cp.recipient_id = n.recipient_identity
    AND cp.notification_category = n.category
CROSS JOIN LATERAL (
    SELECT CASE WHEN np.enabled IS FALSE THEN 'channel_disabled'
                WHEN cp.enabled IS FALSE THEN 'category_disabled' END AS reason
) AS v
ON CONFLICT (notification_id, channel) DO NOTHING
RETURNING id, status, suppression_reason
