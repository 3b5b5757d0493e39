-- pgqueue 0003: what the dashboard needs to list jobs by state at any table size.
-- Applied with search_path set to the target schema, so every name here lands in that schema.

-- The dashboard lists one state's jobs newest first and pages by id (keyset, never OFFSET). The
-- primary key alone would walk every row of the other states to find a rare state's jobs; this
-- index reads exactly one page. The partial indexes of 0001 do not cover it: they order by time.
CREATE INDEX IF NOT EXISTS jobs_state_id_idx ON jobs (state, id);
