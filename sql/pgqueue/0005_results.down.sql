-- Undo pgqueue 0005: recorded results are dropped with their column.
ALTER TABLE jobs DROP COLUMN IF EXISTS result;
