-- Delete the matching jobs, except executing ones (their worker still owns them).
DELETE FROM {jobs}
WHERE ({where}) AND state <> 'executing'
RETURNING id
