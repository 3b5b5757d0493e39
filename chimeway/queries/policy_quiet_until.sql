-- chimeway.policy.next_eligible_at: when a recipient's quiet hours end, if they hold at the given
-- instant (now when NULL); the same function the dispatch claim defers with.
SELECT {quiet_until}(s.time_zone, s.quiet_hours_start_minute, s.quiet_hours_end_minute,
                     coalesce(%(at)s::timestamptz, now()))
FROM {policy_settings} AS s
WHERE s.recipient_id = %(recipient)s
