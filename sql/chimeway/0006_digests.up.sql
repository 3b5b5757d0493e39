-- chimeway 0006: digests. A digest rule holds the deliveries it matches (a notification key or a
-- category, on one channel) in a bucket per recipient, group and window; when the window ends a
-- scheduled flush job emits ONE digest delivery carrying the bucket's members and marks each
-- member `digested` with that delivery's id. A bucket is emitted at most once: the flush locks
-- it, and only a `pending` bucket is emitted.
-- Applied with search_path set to the target schema, so every name here lands in that schema.

-- Defined through chimeway.digests.define_rule, which validates every field first; the checks
-- here keep a row written any other way as strict.
CREATE TABLE chimeway_digest_rules (
    id                     uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    rule_key               text        NOT NULL,
    channel                text        NOT NULL,
    -- exactly one of the two: the notification key, or the category, a delivery must have
    match_notification_key text,
    match_category         text,
    -- NULL: one bucket per recipient; else the key of the event's params whose value groups
    group_by               text,
    -- 'fixed': windows of window_minutes aligned on the epoch; 'daily': a day ending at
    -- boundary_hour:boundary_minute local time in boundary_time_zone
    window_kind            text        NOT NULL,
    window_minutes         integer,
    boundary_hour          integer,
    boundary_minute        integer,
    boundary_time_zone     text,
    inserted_at            timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT chimeway_digest_rules_key_unique UNIQUE (rule_key),
    CONSTRAINT chimeway_digest_rules_key_not_blank CHECK (btrim(rule_key) <> ''),
    CONSTRAINT chimeway_digest_rules_channel_not_blank CHECK (btrim(channel) <> ''),
    CONSTRAINT chimeway_digest_rules_one_match CHECK (
        (match_notification_key IS NULL) <> (match_category IS NULL)
    ),
    CONSTRAINT chimeway_digest_rules_window CHECK (
        (window_kind = 'fixed' AND window_minutes >= 1 AND boundary_hour IS NULL
            AND boundary_minute IS NULL AND boundary_time_zone IS NULL)
        OR (window_kind = 'daily' AND window_minutes IS NULL AND boundary_hour BETWEEN 0 AND 23
            AND boundary_minute BETWEEN 0 AND 59 AND btrim(boundary_time_zone) <> '')
    )
);

-- Two rules never claim the same deliveries: one rule per channel and notification key, one per
-- channel and category (a key rule wins over a category rule for a delivery both match). The
-- indexes also serve planning's lookup of the rules of one key or category.
CREATE UNIQUE INDEX chimeway_digest_rules_key_match ON chimeway_digest_rules (match_notification_key, channel)
    WHERE match_notification_key IS NOT NULL;
CREATE UNIQUE INDEX chimeway_digest_rules_category_match ON chimeway_digest_rules (match_category, channel)
    WHERE match_category IS NOT NULL;

-- One per rule, recipient, group and window: the members held until the window ends.
CREATE TABLE chimeway_digest_buckets (
    id                 uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    rule_id            uuid        NOT NULL REFERENCES chimeway_digest_rules (id) ON DELETE CASCADE,
    recipient_id       text        NOT NULL,
    recipient_type     text        NOT NULL,
    channel            text        NOT NULL,
    -- '' when the rule groups by recipient only, or the event had no such param
    grouping_value     text        NOT NULL DEFAULT '',
    window_starts_at   timestamptz NOT NULL,
    window_ends_at     timestamptz NOT NULL,
    member_count       integer     NOT NULL DEFAULT 0,
    first_held_at      timestamptz NOT NULL DEFAULT now(),
    last_held_at       timestamptz NOT NULL DEFAULT now(),
    -- pending → emitted (a digest delivery was made) or empty (no member was left to carry)
    flush_state        text        NOT NULL DEFAULT 'pending',
    emitted_at         timestamptz,
    digest_delivery_id uuid,

    CONSTRAINT chimeway_digest_buckets_identity UNIQUE (rule_id, recipient_id, channel, grouping_value, window_ends_at),
    CONSTRAINT chimeway_digest_buckets_flush_state_known CHECK (flush_state IN ('pending', 'emitted', 'empty')),
    CONSTRAINT chimeway_digest_buckets_emitted CHECK ((flush_state = 'pending') = (emitted_at IS NULL))
);

-- What the flush of one rule's window reads: its pending buckets, in the order planning locks them.
CREATE INDEX chimeway_digest_buckets_pending_idx
    ON chimeway_digest_buckets (rule_id, window_ends_at, recipient_id, channel, grouping_value)
    WHERE flush_state = 'pending';

-- explain: the bucket a digest delivery was emitted for
CREATE INDEX chimeway_digest_buckets_digest_delivery_idx ON chimeway_digest_buckets (digest_delivery_id)
    WHERE digest_delivery_id IS NOT NULL;

-- One per held delivery (so a delivery is in one bucket only). Written once: what became of the
-- member is on its delivery (digested, digest_delivery_id) and its bucket (emitted_at), so the
-- flush writes no membership row.
CREATE TABLE chimeway_digest_memberships (
    delivery_id        uuid        PRIMARY KEY REFERENCES chimeway_deliveries (id) ON DELETE CASCADE,
    bucket_id          uuid        NOT NULL REFERENCES chimeway_digest_buckets (id) ON DELETE CASCADE,
    inserted_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX chimeway_digest_memberships_bucket_idx ON chimeway_digest_memberships (bucket_id);

-- A member ends `digested`, pointing at the digest delivery that carried it; a held delivery
-- waits in orchestration state 'digest_held' with no dispatch job.
ALTER TABLE chimeway_deliveries ADD COLUMN digest_delivery_id uuid
    REFERENCES chimeway_deliveries (id) ON DELETE SET NULL;
CREATE INDEX chimeway_deliveries_digest_delivery_idx ON chimeway_deliveries (digest_delivery_id)
    WHERE digest_delivery_id IS NOT NULL;
ALTER TABLE chimeway_deliveries DROP CONSTRAINT chimeway_deliveries_status_known;
ALTER TABLE chimeway_deliveries ADD CONSTRAINT chimeway_deliveries_status_known CHECK (
    status IN ('pending', 'dispatched', 'succeeded', 'failed', 'suppressed', 'cancelled', 'digested')
);
ALTER TABLE chimeway_deliveries DROP CONSTRAINT chimeway_deliveries_orchestration_state_known;
ALTER TABLE chimeway_deliveries ADD CONSTRAINT chimeway_deliveries_orchestration_state_known CHECK (
    orchestration_state IN ('ready', 'deferred', 'digest_held')
);
-- only a digested row names a digest (the name goes, SET NULL, if the digest's rows are pruned)
ALTER TABLE chimeway_deliveries ADD CONSTRAINT chimeway_deliveries_digest_only_when_digested CHECK (
    digest_delivery_id IS NULL OR status = 'digested'
);

-- The end of the window that `at` falls in: the next multiple of `minutes` since the epoch
-- ('fixed'), or the next hour:minute local time in time_zone ('daily'; a boundary in a
-- spring-forward gap is read with the offset before the change, as chimeway_quiet_until does).
CREATE FUNCTION chimeway_digest_window_end(
    kind text, minutes integer, hour integer, minute integer, time_zone text, at timestamptz
) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE kind
        WHEN 'fixed' THEN to_timestamp((floor(extract(epoch FROM at) / (minutes * 60)) + 1) * minutes * 60)
        ELSE (
            SELECT CASE WHEN local < boundary THEN boundary ELSE boundary + interval '1 day' END
                       AT TIME ZONE time_zone
            FROM (
                SELECT local, date_trunc('day', local) + make_interval(hours => hour, mins => minute) AS boundary
                FROM (SELECT at AT TIME ZONE time_zone AS local) AS clock
            ) AS today
        )
    END
$$;

-- The start of the window that ends at `ends`: `minutes` before ('fixed'), the same local time
-- a day before ('daily').
CREATE FUNCTION chimeway_digest_window_start(
    kind text, minutes integer, time_zone text, ends timestamptz
) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE kind
        WHEN 'fixed' THEN ends - make_interval(mins => minutes)
        ELSE ((ends AT TIME ZONE time_zone) - interval '1 day') AT TIME ZONE time_zone
    END
$$;
