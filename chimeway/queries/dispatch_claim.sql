-- The dispatch worker's first statement for a batch of jobs: load each delivery with what its
-- adapter needs (notification, event, attempts so far), take the perform checkpoint's policy
-- decisions, and move every delivery where they lead, in the same statement, so a batch of 100
-- jobs costs one round trip and one commit before the adapters run.
--
-- Per delivery, as the one-at-a-time contract does it (chimeway.dispatch module docstring and
-- chimeway.policy), a delivery that may go out now (pending or failed; ready, or deferred until a
-- time that has come) is:
-- * suppressed (policy_checkpoint "perform") when it is a delayed fallback whose notification was
--   read (`already_read`, also from `dispatched`), or the recipient turned its notification off on
--   this channel (`channel_disabled`) or its category off (`category_disabled`);
-- * deferred in the recipient's quiet hours: orchestration_state 'deferred', next_eligible_at the
--   end of them (the caller snoozes the job until then, and that run releases it);
-- * suppressed (`delivery_cap_reached`) when the recipient's cap has no room for its first send;
-- * else `dispatched`; one already `dispatched` (its worker died after the send) is sent again as
--   it is, with no write.
-- Ended or deferred ones come back unchanged, and the caller short-circuits them. Every
-- preference and settings lookup is a primary-key-like probe (their unique indexes); a recipient
-- with no settings row costs one probe that finds nothing.
--
-- The cap is counted on the recipient's settings row: its rows are locked in recipient order
-- (two batches can't deadlock on them), then the UPDATE grants as many first sends as the window
-- has room for, re-reading the row if a concurrent claim changed it meanwhile, so the count is
-- exact across workers. Sends are granted in delivery id order within a batch.
--
-- The deliveries' UPDATE is a compare-and-set on the status and orchestration state this
-- statement read (re-checked against the newest row version if a concurrent transaction changed
-- it): a row it skips comes back with `moved` NULL and a status that may be stale, and the caller
-- re-reads it. The template a delivery names (render_key, render_version, render_data) comes back
-- for the caller to render before the send. The metadata comes back as text and is decoded row by row by the caller, so one row
-- that can't be decoded fails its own delivery, not the batch.
WITH wanted AS (
    SELECT DISTINCT unnest(%(ids)s::uuid[]) AS id
),
current AS (
    SELECT d.id, d.status, d.orchestration_state, d.next_eligible_at, d.delay_fallback,
           d.notification_id, d.channel, n.read_at IS NOT NULL AS read, n.recipient_identity,
           n.metadata::text AS content, e.notification_key,
           d.render_key, d.render_version, d.render_data::text AS render_data,
           (SELECT count(*) FROM {attempts} AS a WHERE a.delivery_id = d.id) AS attempts,
           d.status IN ('pending', 'failed')
               AND (d.orchestration_state = 'ready'
                    OR (d.orchestration_state = 'deferred' AND d.next_eligible_at <= now())) AS open,
           CASE WHEN d.delay_fallback AND n.read_at IS NOT NULL THEN 'already_read'
                WHEN np.enabled IS FALSE THEN 'channel_disabled'
                WHEN cp.enabled IS FALSE THEN 'category_disabled' END AS veto,
           {quiet_until}(s.time_zone, s.quiet_hours_start_minute, s.quiet_hours_end_minute, now())
               AS quiet_until,
           s.time_zone, s.quiet_hours_start_minute, s.quiet_hours_end_minute,
           s.delivery_cap_count, s.delivery_cap_window_minutes
    FROM wanted AS w
    JOIN {deliveries} AS d ON d.id = w.id
    JOIN {notifications} AS n ON n.id = d.notification_id
    JOIN {events} AS e ON e.id = n.event_id
    LEFT JOIN {notification_preferences} AS np
        ON np.recipient_id = n.recipient_identity
        AND np.notification_key = e.notification_key
        AND np.channel = d.channel
    LEFT JOIN {category_preferences} AS cp
        ON cp.recipient_id = n.recipient_identity
        AND cp.notification_category = n.category
    LEFT JOIN {policy_settings} AS s ON s.recipient_id = n.recipient_identity
),
-- first sends that count against a cap, numbered per recipient
asking AS (
    SELECT c.id, c.recipient_identity,
           row_number() OVER (PARTITION BY c.recipient_identity ORDER BY c.id) AS slot
    FROM current AS c
    WHERE c.open AND c.veto IS NULL AND c.quiet_until IS NULL
      AND c.status = 'pending' AND c.delivery_cap_count IS NOT NULL
),
asks AS (
    SELECT recipient_identity AS recipient, count(*) AS wanted FROM asking GROUP BY recipient_identity
),
locked AS MATERIALIZED (
    SELECT s.recipient_id
    FROM {policy_settings} AS s
    JOIN asks AS a ON a.recipient = s.recipient_id
    ORDER BY s.recipient_id
    FOR UPDATE OF s
),
granted AS (
    UPDATE {policy_settings} AS s
    SET cap_granted = {cap_grant}(s.cap_sent_at, s.delivery_cap_count, s.delivery_cap_window_minutes,
                                  a.wanted),
        cap_sent_at = {cap_record}(
            s.cap_sent_at, s.delivery_cap_window_minutes,
            {cap_grant}(s.cap_sent_at, s.delivery_cap_count, s.delivery_cap_window_minutes, a.wanted))
    FROM asks AS a
    JOIN locked AS l ON l.recipient_id = a.recipient
    WHERE s.recipient_id = a.recipient AND s.delivery_cap_count IS NOT NULL
    RETURNING s.recipient_id, s.cap_granted
),
decided AS (
    SELECT c.*,
           CASE WHEN c.status = 'dispatched' AND c.veto = 'already_read'
                     AND c.orchestration_state = 'ready' THEN 'suppress'
                WHEN NOT c.open THEN NULL
                WHEN c.veto IS NOT NULL THEN 'suppress'
                WHEN c.quiet_until IS NOT NULL THEN 'defer'
                WHEN k.slot > coalesce(g.cap_granted, k.slot) THEN 'cap'
                ELSE 'dispatch' END AS action
    FROM current AS c
    LEFT JOIN asking AS k ON k.id = c.id
    LEFT JOIN granted AS g ON g.recipient_id = k.recipient_identity
),
moved AS (
    UPDATE {deliveries} AS d
    SET status = CASE x.action WHEN 'dispatch' THEN 'dispatched' WHEN 'defer' THEN d.status
                               ELSE 'suppressed' END,
        suppression_reason = CASE x.action WHEN 'suppress' THEN x.veto
                                           WHEN 'cap' THEN 'delivery_cap_reached'
                                           ELSE d.suppression_reason END,
        orchestration_state = CASE x.action WHEN 'defer' THEN 'deferred' ELSE 'ready' END,
        next_eligible_at = CASE x.action WHEN 'defer' THEN x.quiet_until ELSE d.next_eligible_at END,
        planning_reason = CASE x.action WHEN 'defer' THEN 'quiet_hours' ELSE d.planning_reason END,
        planning_context = CASE x.action
            WHEN 'defer' THEN jsonb_build_object(
                'rule', 'quiet_hours', 'time_zone', x.time_zone,
                'quiet_hours_start_minute', x.quiet_hours_start_minute,
                'quiet_hours_end_minute', x.quiet_hours_end_minute)
            ELSE d.planning_context END,
        -- the hot path (a ready delivery dispatched) leaves the metadata as it is
        metadata = CASE WHEN x.action = 'dispatch' AND x.orchestration_state = 'ready' THEN d.metadata
            ELSE d.metadata
                || CASE x.action
                       WHEN 'defer' THEN jsonb_build_object(
                           'deferred_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
                       WHEN 'cap' THEN jsonb_build_object(
                           'policy_checkpoint', 'perform',
                           'delivery_cap', jsonb_build_object(
                               'count', x.delivery_cap_count,
                               'window_minutes', x.delivery_cap_window_minutes))
                       WHEN 'suppress' THEN '{{"policy_checkpoint": "perform"}}'::jsonb
                       ELSE '{{}}'::jsonb END
                || CASE WHEN x.orchestration_state = 'deferred' AND x.action <> 'defer'
                        THEN jsonb_build_object(
                            'resumed_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                            'resume_source', 'scheduled_job')
                        ELSE '{{}}'::jsonb END
            END,
        updated_at = now()
    FROM decided AS x
    WHERE d.id = x.id
      AND d.status = x.status
      AND d.orchestration_state = x.orchestration_state
      AND x.action IS NOT NULL
    RETURNING d.id, d.status, d.suppression_reason, d.orchestration_state, d.next_eligible_at
)
SELECT c.id, c.status, m.status AS moved, c.orchestration_state, c.delay_fallback AND c.read AS read,
       c.notification_id, c.channel, c.recipient_identity, c.content, c.notification_key, c.attempts,
       m.suppression_reason, m.orchestration_state AS moved_orchestration,
       extract(epoch FROM coalesce(m.next_eligible_at, c.next_eligible_at) - now())::float8 AS wait,
       c.render_key, c.render_version, c.render_data
FROM current AS c
LEFT JOIN moved AS m ON m.id = c.id
