-- Undo chimeway 0005: journeys and rendering columns (their values are lost).
-- Applied with search_path set to the target schema.
DROP INDEX IF EXISTS chimeway_deliveries_journey_run_idx;
ALTER TABLE chimeway_deliveries DROP CONSTRAINT IF EXISTS chimeway_deliveries_render_data_object;
ALTER TABLE chimeway_deliveries DROP CONSTRAINT IF EXISTS chimeway_deliveries_render_pair;
ALTER TABLE chimeway_deliveries DROP CONSTRAINT IF EXISTS chimeway_deliveries_render_version_positive;
ALTER TABLE chimeway_deliveries DROP COLUMN IF EXISTS journey_step;
ALTER TABLE chimeway_deliveries DROP COLUMN IF EXISTS journey_run_id;
ALTER TABLE chimeway_deliveries DROP COLUMN IF EXISTS render_data;
ALTER TABLE chimeway_deliveries DROP COLUMN IF EXISTS render_version;
ALTER TABLE chimeway_deliveries DROP COLUMN IF EXISTS render_key;
DROP TABLE IF EXISTS chimeway_journey_transitions;
DROP TABLE IF EXISTS chimeway_journey_runs;
DROP TABLE IF EXISTS chimeway_journey_definitions;
