-- Undo chimeway 0004: the policy functions, settings and the deferral columns (their values
-- are lost; deferred deliveries become ready again).
-- Applied with search_path set to the target schema.
DROP FUNCTION IF EXISTS chimeway_cap_record(timestamptz[], integer, integer);
DROP FUNCTION IF EXISTS chimeway_cap_grant(timestamptz[], integer, integer, bigint);
DROP FUNCTION IF EXISTS chimeway_quiet_until(text, integer, integer, timestamptz);
DROP INDEX IF EXISTS chimeway_deliveries_deferred_idx;
UPDATE chimeway_deliveries SET orchestration_state = 'ready' WHERE orchestration_state = 'deferred';
ALTER TABLE chimeway_deliveries DROP CONSTRAINT IF EXISTS chimeway_deliveries_planning_context_object;
ALTER TABLE chimeway_deliveries DROP COLUMN IF EXISTS planning_context;
ALTER TABLE chimeway_deliveries DROP COLUMN IF EXISTS planning_reason;
ALTER TABLE chimeway_deliveries DROP COLUMN IF EXISTS next_eligible_at;
DROP TABLE IF EXISTS chimeway_policy_settings;
