-- Delete finished jobs older than max_age, judged by when they finished, at most `limit` a run.
-- Bounded so a large backlog is worked off in small transactions that never hold locks long.
-- A job's result goes with its row; batches that finished more than max_age ago go too.
WITH doomed_batches AS (
    DELETE FROM {batches}
    WHERE id IN (SELECT id FROM {batches}
                 WHERE finished_at < now() - make_interval(secs => %(max_age)s)
                 LIMIT %(limit)s)
),
doomed AS (
    (SELECT id FROM {jobs}
     WHERE state = 'completed' AND completed_at < now() - make_interval(secs => %(max_age)s)
     LIMIT %(limit)s)
    UNION ALL
    (SELECT id FROM {jobs}
     WHERE state = 'cancelled' AND cancelled_at < now() - make_interval(secs => %(max_age)s)
     LIMIT %(limit)s)
    UNION ALL
    (SELECT id FROM {jobs}
     WHERE state = 'discarded' AND discarded_at < now() - make_interval(secs => %(max_age)s)
     LIMIT %(limit)s)
    LIMIT %(limit)s
)
DELETE FROM {jobs} AS j
USING doomed
WHERE j.id = doomed.id
RETURNING j.id, j.queue, j.state::text
