-- Fan-out, after the deliveries' COPY (chimeway.digests.hold): file the deliveries a digest rule
-- holds. Each goes to its bucket (rule, recipient, channel, group, window end: the window `now()`
-- falls in), created here or counted into; the delivery moves to 'digest_held' with the rule and
-- bucket in its planning_context, and a membership row ties the two.
-- A bucket already flushed (a transaction that began before its window closed, committing after
-- the flush) takes no more members: ON CONFLICT … WHERE leaves it alone, and its deliveries come
-- back as 'release' to be dispatched at once instead, so nothing waits on a bucket that has gone.
-- Buckets are upserted in key order, so two fan-outs filling the same buckets can't deadlock.
-- Returns ('flush', bucket id, window end) for each bucket this statement created (its flush job
-- is the caller's to insert) and ('release', delivery id, NULL) for each delivery not held.
WITH held AS (
    SELECT h.delivery_id, h.rule_id, h.recipient, h.recipient_type, h.channel,
           r.rule_key, r.window_kind, r.window_minutes, r.boundary_time_zone,
           -- a long value is cut and suffixed with its md5: an index entry has a size limit
           CASE WHEN length(g.value) > 200 THEN left(g.value, 160) || '~' || md5(g.value)
                ELSE coalesce(g.value, '') END AS grouping_value,
           {digest_window_end}(r.window_kind, r.window_minutes, r.boundary_hour, r.boundary_minute,
                               r.boundary_time_zone, now()) AS ends
    FROM unnest(%(deliveries)s::uuid[], %(rules)s::uuid[], %(recipients)s::text[], %(types)s::text[],
                %(channels)s::text[])
        AS h (delivery_id, rule_id, recipient, recipient_type, channel)
    JOIN {digest_rules} AS r ON r.id = h.rule_id
    CROSS JOIN LATERAL (SELECT %(payload)s::jsonb ->> r.group_by AS value) AS g
),
buckets AS (
    INSERT INTO {digest_buckets} AS b (
        rule_id, recipient_id, recipient_type, channel, grouping_value, window_starts_at,
        window_ends_at, member_count
    )
    SELECT rule_id, recipient, min(recipient_type), channel, grouping_value,
           {digest_window_start}(window_kind, window_minutes, boundary_time_zone, ends), ends, count(*)
    FROM held
    GROUP BY rule_id, recipient, channel, grouping_value, window_kind, window_minutes, boundary_time_zone, ends
    ORDER BY rule_id, recipient, channel, grouping_value, ends
    ON CONFLICT (rule_id, recipient_id, channel, grouping_value, window_ends_at) DO UPDATE
        SET member_count = b.member_count + excluded.member_count, last_held_at = now()
        WHERE b.flush_state = 'pending'
    RETURNING b.id, b.rule_id, b.recipient_id, b.channel, b.grouping_value, b.window_ends_at,
              b.xmax = 0 AS created
),
filed AS (
    SELECT h.*, b.id AS bucket_id
    FROM held AS h
    JOIN buckets AS b
        ON (b.rule_id, b.recipient_id, b.channel, b.grouping_value, b.window_ends_at)
         = (h.rule_id, h.recipient, h.channel, h.grouping_value, h.ends)
),
members AS (
    INSERT INTO {digest_memberships} (delivery_id, bucket_id)
    SELECT delivery_id, bucket_id FROM filed
    RETURNING delivery_id
),
marked AS (
    UPDATE {deliveries} AS d
    SET orchestration_state = 'digest_held',
        planning_reason = 'digest_rule',
        planning_context = jsonb_build_object(
            'rule', f.rule_key, 'bucket_id', f.bucket_id, 'grouping_value', f.grouping_value,
            'window_ends_at', f.ends
        ),
        updated_at = now()
    FROM filed AS f
    WHERE d.id = f.delivery_id AND d.status = 'pending'
    RETURNING d.id
)
SELECT 'flush', b.id::text, b.window_ends_at FROM buckets AS b WHERE b.created
UNION ALL
SELECT 'release', h.delivery_id::text, NULL FROM held AS h
WHERE NOT EXISTS (SELECT 1 FROM filed AS f WHERE f.delivery_id = h.delivery_id)
