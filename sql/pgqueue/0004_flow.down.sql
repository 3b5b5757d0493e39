-- Undo pgqueue 0004: queues and cron entries declared in the database are dropped with their tables.
DELETE FROM pgqueue_signals WHERE action = 'configure';
ALTER TABLE pgqueue_signals DROP CONSTRAINT pgqueue_signals_action;
ALTER TABLE pgqueue_signals ADD CONSTRAINT pgqueue_signals_action
    CHECK (action IN ('pause', 'resume', 'scale', 'start', 'stop', 'pkill'));
DROP INDEX IF EXISTS jobs_partition_idx;
DROP TABLE IF EXISTS pgqueue_cron;
DROP TABLE IF EXISTS pgqueue_limit_state;
DROP TABLE IF EXISTS pgqueue_queues;
