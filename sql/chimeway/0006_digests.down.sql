-- Undo chimeway 0006: digest rules, buckets and memberships. Held deliveries become ready again
-- (with no dispatch job: re-enqueue them if they should still go out); digested ones are
-- cancelled with the reason 'digested', since the status no longer exists.
-- Applied with search_path set to the target schema.
DROP FUNCTION IF EXISTS chimeway_digest_window_start(text, integer, text, timestamptz);
DROP FUNCTION IF EXISTS chimeway_digest_window_end(text, integer, integer, integer, text, timestamptz);
ALTER TABLE chimeway_deliveries DROP CONSTRAINT IF EXISTS chimeway_deliveries_digest_only_when_digested;
UPDATE chimeway_deliveries SET status = 'cancelled', suppression_reason = 'digested' WHERE status = 'digested';
UPDATE chimeway_deliveries SET orchestration_state = 'ready' WHERE orchestration_state = 'digest_held';
ALTER TABLE chimeway_deliveries DROP CONSTRAINT chimeway_deliveries_orchestration_state_known;
ALTER TABLE chimeway_deliveries ADD CONSTRAINT chimeway_deliveries_orchestration_state_known CHECK (
    orchestration_state IN ('ready', 'deferred')
);
ALTER TABLE chimeway_deliveries DROP CONSTRAINT chimeway_deliveries_status_known;
ALTER TABLE chimeway_deliveries ADD CONSTRAINT chimeway_deliveries_status_known CHECK (
    status IN ('pending', 'dispatched', 'succeeded', 'failed', 'suppressed', 'cancelled')
);
DROP INDEX IF EXISTS chimeway_deliveries_digest_delivery_idx;
ALTER TABLE chimeway_deliveries DROP COLUMN IF EXISTS digest_delivery_id;
DROP TABLE IF EXISTS chimeway_digest_memberships;
DROP TABLE IF EXISTS chimeway_digest_buckets;
DROP TABLE IF EXISTS chimeway_digest_rules;
