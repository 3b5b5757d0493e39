-- Undo pgqueue 0007: the picks go back to inline statements.
DROP FUNCTION IF EXISTS pgqueue_orphans(float8, float8, integer);
DROP FUNCTION IF EXISTS pgqueue_due(timestamptz, text, integer);
DROP FUNCTION IF EXISTS pgqueue_prunable(float8, integer);
DROP FUNCTION IF EXISTS pgqueue_claim(text, integer);
