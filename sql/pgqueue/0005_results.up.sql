-- pgqueue 0005: what a worker returned. NULL until a job completes with a value (and for every job
-- whose worker returns None), so the column costs nothing on the hot path of jobs without results.
-- Applied with search_path set to the target schema, so every name here lands in that schema.

ALTER TABLE jobs ADD COLUMN result jsonb;

COMMENT ON COLUMN jobs.result IS 'the JSON value the worker returned (pgqueue results)';
