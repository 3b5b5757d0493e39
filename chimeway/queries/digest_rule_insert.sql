-- chimeway.digests.define_rule: a validated rule, once. The two partial unique indexes refuse a
-- second rule for the same channel and key (or category), so overlapping rules can't both land
-- even when defined concurrently; the caller turns the violation into an error naming the field.
-- Defining the same rule again (same key, same fields) is a no-op: the row comes back unchanged.
INSERT INTO {digest_rules} AS r (
    rule_key, channel, match_notification_key, match_category, group_by, window_kind,
    window_minutes, boundary_hour, boundary_minute, boundary_time_zone
) VALUES (
    %(rule_key)s, %(channel)s, %(match_notification_key)s, %(match_category)s, %(group_by)s,
    %(window_kind)s, %(window_minutes)s, %(boundary_hour)s, %(boundary_minute)s, %(boundary_time_zone)s
)
ON CONFLICT (rule_key) DO UPDATE SET rule_key = r.rule_key
RETURNING r.id, r.channel, r.match_notification_key, r.match_category, r.group_by, r.window_kind,
          r.window_minutes, r.boundary_hour, r.boundary_minute, r.boundary_time_zone
