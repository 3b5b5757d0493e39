-- pgqueue 0003: what the dashboard needs to list and count jobs by state at any table size.
-- Applied with search_path set to the target schema, so every name here lands in that schema.

-- The dashboard lists one state's jobs newest first and pages by id (keyset, never OFFSET). The
-- primary key alone would walk every row of the other states to find a rare state's jobs; this
-- index reads exactly one page. The queue rides along (INCLUDE) so counting jobs per state and
-- queue is an index-only scan rather than a visit to every row's heap page.
CREATE INDEX IF NOT EXISTS jobs_state_id_idx ON jobs (state, id) INCLUDE (queue);
