-- Take the advisory locks pgqueue_signal takes, for each signal name new jobs will wait for (in
-- name order), before workflow_link reads which signals were already sent: a signal committing
-- meanwhile is then either read by the link or, waiting for these locks, finds the new waits.
SELECT count(pg_advisory_xact_lock(hashtext('pgqueue.workflow_signal'), hashtext(s.name)))
FROM (SELECT DISTINCT unnest(%(names)s::text[]) AS name ORDER BY 1) AS s
