-- chimeway 0003: what the dashboard needs to list deliveries at any table size.
-- Applied with search_path set to the target schema.

-- The delivery list pages newest first by (inserted_at, id) (keyset, never OFFSET): all
-- deliveries, or those of one status. Without these a page sorts the whole table.
CREATE INDEX IF NOT EXISTS chimeway_deliveries_recent_idx ON chimeway_deliveries (inserted_at, id);
CREATE INDEX IF NOT EXISTS chimeway_deliveries_status_recent_idx
    ON chimeway_deliveries (status, inserted_at, id);
