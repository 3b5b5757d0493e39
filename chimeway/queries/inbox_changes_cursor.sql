-- Where the change feed stands now (chimeway.inbox.changes_cursor): the oldest transaction
-- still running, as this statement's snapshot sees it. Every change of an older transaction is
-- already committed (or never will be); every later one is still to come.
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint
