-- chimeway.explain: the bucket a delivery was held in, and what became of it (one row or none):
-- resolved when its bucket was emitted and it was carried (its delivery names the digest).
SELECT b.id, r.rule_key, b.grouping_value, b.window_starts_at, b.window_ends_at, b.flush_state,
       m.inserted_at, CASE WHEN d.digest_delivery_id IS NOT NULL THEN b.emitted_at END,
       d.digest_delivery_id
FROM {digest_memberships} AS m
JOIN {digest_buckets} AS b ON b.id = m.bucket_id
JOIN {digest_rules} AS r ON r.id = b.rule_id
JOIN {deliveries} AS d ON d.id = m.delivery_id
WHERE m.delivery_id = %(delivery_id)s
