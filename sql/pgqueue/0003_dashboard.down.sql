-- pgqueue 0003 down: drop the dashboard's state listing index.
DROP INDEX IF EXISTS jobs_state_id_idx;
