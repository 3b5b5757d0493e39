-- chimeway.digests.flush, per chunk, second statement, on buckets the first one locked: for each
-- bucket still pending, ONE digest delivery carrying its members, rendered as one message: an
-- event (idempotency key 'chimeway-digest:<bucket id>', so even a bypass of the lock could not
-- emit a bucket twice), the recipient's notification whose metadata is the message (a title, a
-- body of the members' titles, the members' contents as items) and a pending delivery on the
-- bucket's channel. Members still held become 'digested' pointing at it, and the bucket is
-- 'emitted' (or 'empty' when no member was left to carry). Returns the
-- digest deliveries (the caller inserts their dispatch jobs in the same transaction).
-- The new rows' ids come from the caller with the bucket ids (`plan`), and the members found once
-- (`packed`) are written by primary key: every write reaches the tables through their indexes
-- by bucket or delivery id, never by a scan the planner might pick on stale statistics (a chunk
-- of 500 buckets then took seconds).
WITH plan AS (
    SELECT *
    FROM unnest(%(ids)s::uuid[], %(event_ids)s::uuid[], %(notification_ids)s::uuid[], %(digest_ids)s::uuid[])
        AS p (bucket_id, event_id, notification_id, digest_id)
),
packed AS MATERIALIZED (
    SELECT p.bucket_id, p.event_id, p.notification_id, p.digest_id, b.recipient_id, b.recipient_type,
           b.channel, b.grouping_value, b.window_starts_at, b.window_ends_at, r.rule_key,
           count(*)::integer AS member_count,
           array_agg(d.id) AS member_ids,
           jsonb_agg(jsonb_build_object('delivery_id', d.id, 'notification_key', e.notification_key,
                                        'content', n.metadata) ORDER BY n.inserted_at, d.id) AS items,
           string_agg(coalesce(n.metadata ->> 'title', e.notification_key), E'\n' ORDER BY n.inserted_at, d.id)
               AS body
    FROM plan AS p
    JOIN {digest_buckets} AS b ON b.id = p.bucket_id AND b.flush_state = 'pending'
    JOIN {digest_rules} AS r ON r.id = b.rule_id
    JOIN {digest_memberships} AS m ON m.bucket_id = b.id
    JOIN {deliveries} AS d
        ON d.id = m.delivery_id AND d.status = 'pending' AND d.orchestration_state = 'digest_held'
    JOIN {notifications} AS n ON n.id = d.notification_id
    JOIN {events} AS e ON e.id = n.event_id
    GROUP BY p.bucket_id, p.event_id, p.notification_id, p.digest_id, b.id, r.rule_key
),
new_events AS (
    INSERT INTO {events} (id, notification_key, notification_version, idempotency_key, payload)
    SELECT event_id, %(digest_key)s, 1, 'chimeway-digest:' || bucket_id,
           jsonb_build_object('digest_rule', rule_key, 'bucket_id', bucket_id, 'member_count', member_count)
    FROM packed
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
                   'rule', rule_key, 'bucket_id', bucket_id, 'member_count', member_count,
                   'grouping_value', grouping_value, 'window_starts_at', window_starts_at,
                   'window_ends_at', window_ends_at))
    FROM packed
),
new_deliveries AS (
    INSERT INTO {deliveries} (id, notification_id, channel, metadata, actor_id)
    SELECT digest_id, notification_id, channel,
           jsonb_build_object('notification_key', %(digest_key)s, 'event_id', event_id,
                              'digest_rule', rule_key, 'digest_bucket_id', bucket_id,
                              'member_count', member_count),
           recipient_id
    FROM packed
),
members AS (
    SELECT unnest(member_ids) AS delivery_id, digest_id FROM packed
),
-- The members by primary key, one probe each, whatever the tables' statistics say
digested AS (
    UPDATE {deliveries} AS d
    SET status = 'digested', digest_delivery_id = m.digest_id, updated_at = now()
    FROM members AS m
    WHERE d.id = m.delivery_id AND d.status = 'pending' AND d.orchestration_state = 'digest_held'
),
flushed AS (
    -- packed has one row per emitted bucket (at most a chunk): the left join is a short scan
    UPDATE {digest_buckets} AS b
    SET flush_state = CASE WHEN k.bucket_id IS NULL THEN 'empty' ELSE 'emitted' END,
        emitted_at = now(),
        digest_delivery_id = k.digest_id,
        member_count = coalesce(k.member_count, 0)
    FROM plan AS p
    LEFT JOIN packed AS k ON k.bucket_id = p.bucket_id
    WHERE b.id = p.bucket_id AND b.flush_state = 'pending'
)
SELECT digest_id, member_count FROM packed
