-- Undo pgqueue 0006: workflows, signals and timers. Jobs still parked waiting stay `scheduled` at
-- 9999-06-01; release or delete them before rolling back.
DROP TRIGGER IF EXISTS jobs_workflow_deleted ON jobs;
DROP TRIGGER IF EXISTS jobs_workflow_finished ON jobs;
DROP FUNCTION IF EXISTS pgqueue_signal(text, jsonb);
DROP FUNCTION IF EXISTS pgqueue_workflow_deleted();
DROP FUNCTION IF EXISTS pgqueue_workflow_finished();
DROP FUNCTION IF EXISTS pgqueue_workflow_resolve(bigint[], text[], boolean);
DROP FUNCTION IF EXISTS pgqueue_workflow_release(bigint[]);
DROP TABLE IF EXISTS pgqueue_workflow_signals;
DROP TABLE IF EXISTS pgqueue_workflow_waits;
DROP TABLE IF EXISTS pgqueue_workflow_deps;
DROP TABLE IF EXISTS pgqueue_workflow_resolved;
ALTER TABLE jobs DROP COLUMN IF EXISTS has_dependents;
