-- chimeway 0001: the delivery spine. Events, their notifications (one per recipient, also the
-- inbox), deliveries (one per notification per channel: the state machine), the append-only
-- attempts of each delivery, and the two preference tables.
-- Applied with search_path set to the target schema, so every name here lands in that schema.
-- Elixir Chimeway leaves its enumerated columns unchecked; every one here carries a CHECK, so the
-- database refuses a state the code could not explain.

-- One row per trigger call. The unique idempotency key is what makes a repeated trigger a no-op.
CREATE TABLE chimeway_events (
    id                   uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    notification_key     text        NOT NULL,
    notification_version integer     NOT NULL,
    idempotency_key      text        NOT NULL,
    -- the trigger's params with password/token/secret keys removed
    payload              jsonb       NOT NULL DEFAULT '{}',
    correlation_id       text,
    inserted_at          timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT chimeway_events_idempotency_key_unique UNIQUE (idempotency_key),
    CONSTRAINT chimeway_events_idempotency_key_not_blank CHECK (btrim(idempotency_key) <> ''),
    CONSTRAINT chimeway_events_notification_key_not_blank CHECK (btrim(notification_key) <> ''),
    CONSTRAINT chimeway_events_version_positive CHECK (notification_version >= 1),
    CONSTRAINT chimeway_events_payload_object CHECK (jsonb_typeof(payload) = 'object')
);

-- Tracing by correlation id; most events may have none, so the index holds only those that do.
CREATE INDEX chimeway_events_correlation_id_idx ON chimeway_events (correlation_id)
    WHERE correlation_id IS NOT NULL;

-- One row per recipient of an event. Its seen/read/archived timestamps make it the inbox.
CREATE TABLE chimeway_notifications (
    id                 uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    event_id           uuid        NOT NULL REFERENCES chimeway_events (id) ON DELETE CASCADE,
    -- an opaque string such as 'user:42'; the same value as recipient_id in the preferences
    recipient_identity text        NOT NULL,
    recipient_type     text        NOT NULL,
    seen_at            timestamptz,
    read_at            timestamptz,
    archived_at        timestamptz,
    -- what the notifier built for this recipient (the rendered content), sanitized
    metadata           jsonb       NOT NULL DEFAULT '{}',
    inserted_at        timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),

    -- also serves lookups by event_id, its leading column
    CONSTRAINT chimeway_notifications_event_recipient_unique UNIQUE (event_id, recipient_identity),
    CONSTRAINT chimeway_notifications_recipient_not_blank CHECK (btrim(recipient_identity) <> ''),
    CONSTRAINT chimeway_notifications_metadata_object CHECK (jsonb_typeof(metadata) = 'object')
);

-- The inbox: one recipient's notifications, unread first, newest first.
CREATE INDEX chimeway_notifications_inbox_idx
    ON chimeway_notifications (recipient_identity, read_at, inserted_at);

-- One row per notification per channel. Every change of status goes through
-- chimeway.deliveries as a compare-and-set on status.
CREATE TABLE chimeway_deliveries (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    notification_id     uuid        NOT NULL REFERENCES chimeway_notifications (id) ON DELETE CASCADE,
    -- always a string: 'in_app', 'email', 'sms_custom', …
    channel             text        NOT NULL,
    status              text        NOT NULL DEFAULT 'pending',
    -- why a suppressed or cancelled row ended there: channel_disabled, permanent_failure, …
    suppression_reason  text,
    -- a delayed fallback channel: skipped at perform time if the notification was read by then
    delay_fallback      boolean     NOT NULL DEFAULT false,
    -- correlation and explanation keys (notification_key, event_id, policy_checkpoint, …)
    metadata            jsonb       NOT NULL DEFAULT '{}',
    orchestration_state text        NOT NULL DEFAULT 'ready',
    tenant_id           text        NOT NULL DEFAULT 'default',
    actor_id            text        NOT NULL DEFAULT 'system',
    inserted_at         timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),

    -- planning's idempotency key (ON CONFLICT DO NOTHING); also serves lookups by notification
    CONSTRAINT chimeway_deliveries_notification_channel_unique UNIQUE (notification_id, channel),
    CONSTRAINT chimeway_deliveries_channel_length CHECK (char_length(btrim(channel)) BETWEEN 1 AND 128),
    CONSTRAINT chimeway_deliveries_status_known CHECK (
        status IN ('pending', 'dispatched', 'succeeded', 'failed', 'suppressed', 'cancelled')
    ),
    -- a reason explains how a row ended, so only the two states that end without a success have
    -- one (a suppression or cancellation made by hand through the transition table has none)
    CONSTRAINT chimeway_deliveries_reason_only_when_ended CHECK (
        suppression_reason IS NULL OR status IN ('suppressed', 'cancelled')
    ),
    CONSTRAINT chimeway_deliveries_reason_not_blank CHECK (btrim(suppression_reason) <> ''),
    CONSTRAINT chimeway_deliveries_orchestration_state_known CHECK (
        orchestration_state IN ('ready', 'deferred')
    ),
    CONSTRAINT chimeway_deliveries_metadata_object CHECK (jsonb_typeof(metadata) = 'object'),
    CONSTRAINT chimeway_deliveries_tenant_not_blank CHECK (btrim(tenant_id) <> ''),
    CONSTRAINT chimeway_deliveries_actor_not_blank CHECK (btrim(actor_id) <> '')
) WITH (
    -- a delivery row is updated a few times in its life (dispatched, failed, …): leave room on
    -- each page so those updates stay on the page (HOT)
    fillfactor = 85
);

-- Deliveries still in flight, oldest change first: what an operator (or a reaper of rows stuck in
-- 'dispatched' after a crash) looks at. Partial, so finished history does not grow it.
CREATE INDEX chimeway_deliveries_open_idx ON chimeway_deliveries (status, updated_at)
    WHERE status IN ('pending', 'dispatched', 'failed');

-- One row per adapter call, numbered 1, 2, 3, … per delivery under the delivery's row lock.
-- Never updated: the history of a delivery is only ever appended to.
CREATE TABLE chimeway_delivery_attempts (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    delivery_id         uuid        NOT NULL REFERENCES chimeway_deliveries (id) ON DELETE CASCADE,
    attempt_number      integer     NOT NULL,
    outcome             text        NOT NULL,
    error_class         text,
    -- what the adapter reported, with password/token/secret keys removed
    provider_response   jsonb,
    provider_message_id text,
    -- the adapter's registry name: 'logger', 'test', 'webhook', …
    adapter             text,
    inserted_at         timestamptz NOT NULL DEFAULT now(),

    -- contiguous numbering is enforced here as well as computed under the lock; also serves
    -- lookups by delivery_id, its leading column
    CONSTRAINT chimeway_delivery_attempts_number_unique UNIQUE (delivery_id, attempt_number),
    CONSTRAINT chimeway_delivery_attempts_number_positive CHECK (attempt_number >= 1),
    CONSTRAINT chimeway_delivery_attempts_outcome_known CHECK (
        outcome IN ('succeeded', 'failed', 'bounced', 'rejected')
    ),
    CONSTRAINT chimeway_delivery_attempts_error_class_known CHECK (
        error_class IN ('temporary', 'permanent', 'bounced', 'unknown_classification')
    ),
    -- the only pairs the classifier produces; anything else is a bug upstream
    CONSTRAINT chimeway_delivery_attempts_outcome_matches_class CHECK (
        (outcome = 'succeeded' AND error_class IS NULL)
        OR (outcome = 'failed' AND error_class = 'temporary')
        OR (outcome = 'rejected' AND error_class IN ('permanent', 'unknown_classification'))
        OR (outcome = 'bounced' AND error_class = 'bounced')
    ),
    CONSTRAINT chimeway_delivery_attempts_response_object CHECK (
        provider_response IS NULL OR jsonb_typeof(provider_response) = 'object'
    )
);

-- Provider feedback (a bounce report, a read receipt) names the provider's message id.
CREATE INDEX chimeway_delivery_attempts_provider_message_id_idx
    ON chimeway_delivery_attempts (provider_message_id) WHERE provider_message_id IS NOT NULL;

-- Append-only means it: an UPDATE of an attempt is refused. (DELETE stays possible, so a
-- delivery's cascade and any pruning of old history still work.)
CREATE FUNCTION chimeway_delivery_attempts_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'restrict_violation',
        MESSAGE = 'chimeway_delivery_attempts is append-only: attempt ' || OLD.attempt_number
            || ' of delivery ' || OLD.delivery_id || ' can''t be updated';
END;
$$;

CREATE TRIGGER chimeway_delivery_attempts_append_only
    BEFORE UPDATE ON chimeway_delivery_attempts
    FOR EACH ROW EXECUTE FUNCTION chimeway_delivery_attempts_append_only();

-- A recipient's choice for one notification on one channel. A missing row means enabled.
CREATE TABLE chimeway_notification_preferences (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    recipient_id     text        NOT NULL,
    notification_key text        NOT NULL,
    channel          text        NOT NULL,
    enabled          boolean     NOT NULL DEFAULT true,
    inserted_at      timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT chimeway_notification_preferences_unique UNIQUE (recipient_id, notification_key, channel)
);

-- A recipient's choice for a whole category (taken from the event payload's "category").
CREATE TABLE chimeway_category_preferences (
    id                    uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    recipient_id          text        NOT NULL,
    notification_category text        NOT NULL,
    enabled               boolean     NOT NULL DEFAULT true,
    inserted_at           timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT chimeway_category_preferences_unique UNIQUE (recipient_id, notification_category)
);
