-- Undo chimeway 0003: the dashboard's delivery list indexes.
DROP INDEX IF EXISTS chimeway_deliveries_status_recent_idx;
DROP INDEX IF EXISTS chimeway_deliveries_recent_idx;
