-- Delete finished jobs older than max_age, judged by when they finished, at most `limit` a run.
-- Bounded so a large backlog is worked off in small transactions that never hold locks long.
-- A job's result goes with its row; batches that finished more than max_age ago go too.
-- The pick is pgqueue_prunable (migration 0007): each state read from its own index in a walk that
-- stops after `limit` rows, never a bitmap of every finished row (the plan without statistics).
WITH doomed_batches AS (
    DELETE FROM {batches}
    WHERE id IN (SELECT id FROM {batches}
                 WHERE finished_at < now() - make_interval(secs => %(max_age)s)
                 LIMIT %(limit)s)
),
doomed AS (
    SELECT id FROM {prunable}(%(max_age)s::float8, %(limit)s::integer) AS id
)
DELETE FROM {jobs} AS j
USING doomed
WHERE j.id = doomed.id
RETURNING j.id, j.queue, j.state::text
