-- Undo pgqueue 0009: the limited fetch's count goes back to an inline statement.
DROP FUNCTION IF EXISTS pgqueue_executing_count(text, text, bigint[], integer);
