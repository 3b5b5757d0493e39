-- Delete the workflow signals no step needs any more, at most `limit` a run: a signal some step
-- received, once it was sent more than max_age ago (as long as finished jobs are kept), and any
-- signal sent more than signal_max_age ago, received or not. A step that starts waiting for a
-- name after its signal was pruned waits for the next one (or its timeout). Bounded like the
-- jobs' pruning, so a backlog is worked off in short transactions; SKIP LOCKED leaves a signal
-- being sent again right now to a later run, and a row re-sent since this statement's snapshot
-- is re-checked against its new sent_at before it is locked.
DELETE FROM {workflow_signals}
WHERE name IN (
    SELECT s.name
    FROM {workflow_signals} AS s
    WHERE s.sent_at < now() - make_interval(secs => %(signal_max_age)s)
       OR (s.sent_at < now() - make_interval(secs => %(max_age)s)
           AND EXISTS (SELECT 1 FROM {workflow_waits} AS w
                       WHERE w.signal = s.name AND w.signalled_at IS NOT NULL))
    ORDER BY s.sent_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING name
