-- chimeway 0004: delivery policies. Per-recipient settings (quiet hours in the recipient's time
-- zone, a delivery cap of N per window), the columns a deferred delivery carries until a
-- scheduled run releases it, and the two functions the dispatch claim evaluates them with.
-- Applied with search_path set to the target schema, so every name here lands in that schema.

-- One row per recipient who has a policy (no row: no quiet hours, no cap). Written by
-- chimeway.policy, which checks the time zone against the IANA database before it gets here.
CREATE TABLE chimeway_policy_settings (
    id                          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    -- the same opaque string as chimeway_notifications.recipient_identity ('user:42')
    recipient_id                text        NOT NULL,
    -- quiet hours: local minutes of the day [start, end), wrapping past midnight when start > end
    quiet_hours_start_minute    integer,
    quiet_hours_end_minute      integer,
    time_zone                   text,
    -- the cap: at most delivery_cap_count deliveries sent in any delivery_cap_window_minutes
    delivery_cap_count          integer,
    delivery_cap_window_minutes integer,
    -- when the deliveries counted against the cap were sent (only those still in the window are
    -- kept). The dispatch claim appends to it under the row's lock, so concurrent workers count
    -- every send once and the cap holds across them.
    cap_sent_at                 timestamptz[] NOT NULL DEFAULT '{}',
    -- how many sends the last claim was granted: written and read back by that claim only
    cap_granted                 integer     NOT NULL DEFAULT 0,
    inserted_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT chimeway_policy_settings_recipient_unique UNIQUE (recipient_id),
    CONSTRAINT chimeway_policy_settings_recipient_not_blank CHECK (btrim(recipient_id) <> ''),
    CONSTRAINT chimeway_policy_settings_quiet_hours_complete CHECK (
        (quiet_hours_start_minute IS NULL) = (quiet_hours_end_minute IS NULL)
        AND (quiet_hours_start_minute IS NULL) = (time_zone IS NULL)
    ),
    CONSTRAINT chimeway_policy_settings_quiet_hours_minutes CHECK (
        quiet_hours_start_minute BETWEEN 0 AND 1439
        AND quiet_hours_end_minute BETWEEN 0 AND 1439
        AND quiet_hours_start_minute <> quiet_hours_end_minute
    ),
    CONSTRAINT chimeway_policy_settings_time_zone_not_blank CHECK (btrim(time_zone) <> ''),
    CONSTRAINT chimeway_policy_settings_cap_complete CHECK (
        (delivery_cap_count IS NULL) = (delivery_cap_window_minutes IS NULL)
    ),
    CONSTRAINT chimeway_policy_settings_cap_positive CHECK (
        delivery_cap_count >= 1 AND delivery_cap_window_minutes >= 1
    )
);

-- A deferred delivery (orchestration_state 'deferred') waits until next_eligible_at; its
-- dispatch job is snoozed until then and releases it. planning_reason says why it waits
-- ('quiet_hours'), planning_context the facts it was decided on (rule, zone, minutes).
ALTER TABLE chimeway_deliveries ADD COLUMN next_eligible_at timestamptz;
ALTER TABLE chimeway_deliveries ADD COLUMN planning_reason text;
ALTER TABLE chimeway_deliveries ADD COLUMN planning_context jsonb;
ALTER TABLE chimeway_deliveries ADD CONSTRAINT chimeway_deliveries_planning_context_object
    CHECK (planning_context IS NULL OR jsonb_typeof(planning_context) = 'object');

-- What an operator looks at: the deferred deliveries, by when they become eligible.
CREATE INDEX chimeway_deliveries_deferred_idx ON chimeway_deliveries (next_eligible_at)
    WHERE orchestration_state = 'deferred';

-- When quiet hours [start_minute, end_minute) in time_zone hold at the instant `at`: the instant
-- they end, else NULL. The local clock is the zone's at that instant and the end is a local time
-- converted back through the zone, so a DST change inside the window moves the end by the
-- change (22:00-07:00 in New York ends at 11:00 UTC in summer, 12:00 UTC in winter). An end that
-- falls in a spring-forward gap is read with the offset before the change (02:30 on the night
-- New York jumps from 02:00 to 03:00 is 03:30). Any NULL argument → NULL (no quiet hours).
CREATE FUNCTION chimeway_quiet_until(
    time_zone text, start_minute integer, end_minute integer, at timestamptz
) RETURNS timestamptz
LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE
        WHEN start_minute < end_minute AND minute >= start_minute AND minute < end_minute
            THEN (day + make_interval(mins => end_minute)) AT TIME ZONE time_zone
        WHEN start_minute > end_minute AND minute >= start_minute
            THEN (day + interval '1 day' + make_interval(mins => end_minute)) AT TIME ZONE time_zone
        WHEN start_minute > end_minute AND minute < end_minute
            THEN (day + make_interval(mins => end_minute)) AT TIME ZONE time_zone
    END
    FROM (
        SELECT date_trunc('day', local) AS day,
               (extract(hour FROM local) * 60 + extract(minute FROM local))::integer AS minute
        FROM (SELECT at AT TIME ZONE time_zone AS local) AS clock
    ) AS today
$$;

-- How many of `wanted` sends a cap of `cap` per `window_minutes` grants now, given the send
-- times already counted (`sent`).
CREATE FUNCTION chimeway_cap_grant(
    sent timestamptz[], cap integer, window_minutes integer, wanted bigint
) RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT greatest(0, least(wanted, cap - (
        SELECT count(*) FROM unnest(sent) AS s (at) WHERE s.at > now() - make_interval(mins => window_minutes)
    )))::integer
$$;

-- The send times a cap keeps after granting `granted` sends now: those still in the window, and
-- `granted` times now().
CREATE FUNCTION chimeway_cap_record(
    sent timestamptz[], window_minutes integer, granted integer
) RETURNS timestamptz[]
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT ARRAY(
        SELECT s.at FROM unnest(sent) AS s (at) WHERE s.at > now() - make_interval(mins => window_minutes)
    ) || array_fill(now(), ARRAY[granted])
$$;
