-- chimeway.digests.flush, per chunk, second statement, on buckets the first one locked: for each
-- bucket still pending, ONE digest delivery carrying its members, rendered as one message: an
-- event (idempotency key 'chimeway-digest:<bucket id>', so even a bypass of the lock could not
-- emit a bucket twice), the recipient's notification whose metadata is the message (a title, a
-- body of the members' titles, the members' contents as items) and a pending delivery on the
-- bucket's channel. Members still held become 'digested' pointing at it, their memberships are
-- resolved, and the bucket is 'emitted' (or 'empty' when no member was left to carry). Returns the
-- digest deliveries (the caller inserts their dispatch jobs in the same transaction).
WITH due AS (
    SELECT b.id, b.recipient_id, b.recipient_type, b.channel, b.grouping_value,
           b.window_starts_at, b.window_ends_at, r.rule_key
    FROM {digest_buckets} AS b
    JOIN {digest_rules} AS r ON r.id = b.rule_id
    WHERE b.id = ANY(%(ids)s::uuid[]) AND b.flush_state = 'pending'
),
members AS (
    SELECT m.bucket_id, d.id AS delivery_id, n.metadata AS content, e.notification_key,
           n.inserted_at
    FROM due
    JOIN {digest_memberships} AS m ON m.bucket_id = due.id
    JOIN {deliveries} AS d ON d.id = m.delivery_id
    JOIN {notifications} AS n ON n.id = d.notification_id
    JOIN {events} AS e ON e.id = n.event_id
    WHERE d.status = 'pending' AND d.orchestration_state = 'digest_held'
),
packed AS (
    SELECT bucket_id, count(*)::integer AS member_count,
           jsonb_agg(jsonb_build_object('delivery_id', delivery_id, 'notification_key', notification_key,
                                        'content', content) ORDER BY inserted_at, delivery_id) AS items,
           string_agg(coalesce(content ->> 'title', notification_key), E'\n' ORDER BY inserted_at, delivery_id)
               AS body
    FROM members
    GROUP BY bucket_id
),
plan AS MATERIALIZED (
    SELECT due.*, p.member_count, p.items, p.body,
           gen_random_uuid() AS event_id, gen_random_uuid() AS notification_id,
           gen_random_uuid() AS digest_id
    FROM due
    JOIN packed AS p ON p.bucket_id = due.id
),
new_events AS (
    INSERT INTO {events} (id, notification_key, notification_version, idempotency_key, payload)
    SELECT event_id, %(digest_key)s, 1, 'chimeway-digest:' || id,
           jsonb_build_object('digest_rule', rule_key, 'bucket_id', id, 'member_count', member_count)
    FROM plan
),
new_notifications AS (
    INSERT INTO {notifications} (id, event_id, recipient_identity, recipient_type, metadata)
    SELECT notification_id, event_id, recipient_id, recipient_type,
           jsonb_build_object(
               'title', member_count || CASE WHEN member_count = 1 THEN ' new notification'
                                             ELSE ' new notifications' END,
               'body', body,
               'items', items,
               'digest', jsonb_build_object(
                   'rule', rule_key, 'bucket_id', id, 'member_count', member_count,
                   'grouping_value', grouping_value, 'window_starts_at', window_starts_at,
                   'window_ends_at', window_ends_at))
    FROM plan
),
new_deliveries AS (
    INSERT INTO {deliveries} (id, notification_id, channel, metadata, actor_id)
    SELECT digest_id, notification_id, channel,
           jsonb_build_object('notification_key', %(digest_key)s, 'event_id', event_id,
                              'digest_rule', rule_key, 'digest_bucket_id', id,
                              'member_count', member_count),
           recipient_id
    FROM plan
),
digested AS (
    UPDATE {deliveries} AS d
    SET status = 'digested', digest_delivery_id = p.digest_id, updated_at = now()
    FROM members AS m
    JOIN plan AS p ON p.id = m.bucket_id
    WHERE d.id = m.delivery_id AND d.status = 'pending' AND d.orchestration_state = 'digest_held'
),
resolved AS (
    UPDATE {digest_memberships} AS ms
    SET resolved_at = now(), digest_delivery_id = p.digest_id
    FROM members AS m
    JOIN plan AS p ON p.id = m.bucket_id
    WHERE ms.delivery_id = m.delivery_id
),
flushed AS (
    UPDATE {digest_buckets} AS b
    SET flush_state = CASE WHEN p.id IS NULL THEN 'empty' ELSE 'emitted' END,
        emitted_at = now(),
        digest_delivery_id = p.digest_id,
        member_count = coalesce(p.member_count, 0)
    FROM due
    LEFT JOIN plan AS p ON p.id = due.id
    WHERE b.id = due.id
)
SELECT digest_id, member_count FROM plan
