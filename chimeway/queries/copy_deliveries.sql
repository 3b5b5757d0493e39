-- Fan-out, step 4 (chimeway.planning): one delivery per notification and channel, pending or
-- suppressed at planning with its reason, streamed with COPY like the notifications. Ids and
-- notification ids come from the client, and whether the channel is a delayed fallback; tenant
-- and orchestration state keep their defaults ('default', 'ready'), as plan_delivery leaves them.
COPY {deliveries} (id, notification_id, channel, status, suppression_reason, metadata, delay_fallback, actor_id) FROM STDIN
