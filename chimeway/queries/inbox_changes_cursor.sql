-- Where the change feed stands now (chimeway.inbox.changes_cursor): its horizon as this
-- statement's snapshot sees it (see chimeway_inbox_horizon in sql/chimeway/0002). Every change
-- stamped below it is already committed (or never will be); every later one is still to come.
SELECT {inbox_horizon}()
