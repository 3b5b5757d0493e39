-- chimeway.explain: the bucket a delivery was held in, and what became of it (one row or none).
SELECT b.id, r.rule_key, b.grouping_value, b.window_starts_at, b.window_ends_at, b.flush_state,
       m.inserted_at, m.resolved_at, m.digest_delivery_id
FROM {digest_memberships} AS m
JOIN {digest_buckets} AS b ON b.id = m.bucket_id
JOIN {digest_rules} AS r ON r.id = b.rule_id
WHERE m.delivery_id = %(delivery_id)s
