-- One recipient's notifications created or changed after a change cursor, oldest change first,
-- each as it is now (chimeway.inbox.changes_since). A row's place in the feed is
-- (changed_xid, id): the transaction that last changed it, then its id.
--
-- Why not a sequence: a change numbered 10 by a transaction that commits after the one numbered
-- 11 would be skipped by a reader that already moved past 11. Here only changes stamped below
-- the horizon are returned (chimeway_inbox_horizon, sql/chimeway/0002): the oldest transaction of
-- this database still running as this statement's snapshot sees it. Every transaction below it
-- has ended, so none can still commit a change below the next cursor; a change committed while
-- an older transaction still runs waits (`pending`) until that one ends. The horizon comes from
-- this statement's own snapshot, the one its rows come from.
--
-- The cursor is exclusive: (xid, id) after the last row returned; with a NULL id it is a
-- horizon, and every change of transaction xid onwards is still to come. `floor` is the horizon
-- the cursor proves was already reached (its xid, or just past it when it names a row): the
-- horizon never goes back below it, even if this read, racing a transaction of another database
-- as it ends, counts that one as running here.
WITH horizon AS MATERIALIZED (
    SELECT greatest({inbox_horizon}(), %(floor)s) AS xid
),
page AS (
    SELECT n.id, n.event_id, e.notification_key, n.category, n.metadata, n.seen_at, n.read_at,
           n.archived_at, n.inserted_at, n.changed_xid
    FROM {notifications} AS n
    JOIN {events} AS e ON e.id = n.event_id
    WHERE n.recipient_identity = %(identity)s
      AND n.changed_xid >= %(xid)s
      AND (n.changed_xid > %(xid)s OR %(id)s::uuid IS NULL OR n.id > %(id)s::uuid)
      AND n.changed_xid < (SELECT xid FROM horizon)
    ORDER BY n.changed_xid, n.id
    LIMIT %(limit)s
)
SELECT horizon.xid,
       EXISTS (
           SELECT FROM {notifications} AS held
           WHERE held.recipient_identity = %(identity)s AND held.changed_xid >= horizon.xid
       ) AS pending,
       page.id, page.event_id, page.notification_key, page.category, page.metadata, page.seen_at,
       page.read_at, page.archived_at, page.inserted_at, page.changed_xid
FROM horizon
LEFT JOIN page ON true
ORDER BY page.changed_xid, page.id
