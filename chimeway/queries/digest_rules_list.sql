-- chimeway.digests.list_rules: every rule, by key (a small table an operator reads).
SELECT id, rule_key, channel, match_notification_key, match_category, group_by, window_kind,
       window_minutes, boundary_hour, boundary_minute, boundary_time_zone
FROM {digest_rules}
ORDER BY rule_key
