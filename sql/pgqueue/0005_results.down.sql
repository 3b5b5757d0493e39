-- Undo pgqueue 0005: recorded results and batches are dropped with their columns and table.
DROP INDEX IF EXISTS jobs_batch_idx;
ALTER TABLE jobs DROP COLUMN IF EXISTS batch_id;
DROP TABLE IF EXISTS pgqueue_batches;
ALTER TABLE jobs DROP COLUMN IF EXISTS awaited;
ALTER TABLE jobs DROP COLUMN IF EXISTS result;
