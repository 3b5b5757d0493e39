-- chimeway.explain: the bucket a digest delivery was emitted for, with its members' ids in the
-- order the digest carries them (none: not a digest delivery).
SELECT b.id, r.rule_key, b.grouping_value, b.window_starts_at, b.window_ends_at, b.emitted_at,
       ARRAY(SELECT m.delivery_id FROM {digest_memberships} AS m
             JOIN {deliveries} AS d ON d.id = m.delivery_id
             WHERE m.bucket_id = b.id AND d.digest_delivery_id = b.digest_delivery_id
             ORDER BY m.inserted_at, m.delivery_id) AS members
FROM {digest_buckets} AS b
JOIN {digest_rules} AS r ON r.id = b.rule_id
WHERE b.digest_delivery_id = %(delivery_id)s
