-- Undo pgqueue 0001: drops every job. Applied with search_path set to the target schema.
DROP TABLE IF EXISTS pgqueue_leaders;
DROP TABLE IF EXISTS pgqueue_producers;
DROP TABLE IF EXISTS jobs;
DROP TYPE IF EXISTS job_state;
