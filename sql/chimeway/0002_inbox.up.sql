-- chimeway 0002: the inbox (chimeway.inbox). A category per notification, the indexes the inbox
-- reads through, and the change feed: every change of what the inbox shows stamps the row with
-- the changing transaction's id, and every statement that changes rows wakes their recipients'
-- listeners with one NOTIFY per channel.
-- Applied with search_path set to the target schema, so every name here lands in that schema.

-- What kind of notification this is ('comments', 'billing', …): the notifier's category, else the
-- event payload's "category". NULL when it has none; never blank.
ALTER TABLE chimeway_notifications ADD COLUMN category text;
ALTER TABLE chimeway_notifications ADD CONSTRAINT chimeway_notifications_category_not_blank
    CHECK (btrim(category) <> '');

-- The transaction that last changed what the inbox shows of this row (created it, or changed its
-- seen/read/archived state, category or content), as pg_current_xact_id(): the change feed's
-- order. chimeway.inbox.changes_since returns a change only once every transaction with a lower
-- id has ended, so one that commits late is never skipped. A bigint (the xid8 as a number) so
-- that every client library reads it. Existing rows get the migrating transaction's id.
ALTER TABLE chimeway_notifications
    ADD COLUMN changed_xid bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint);

-- The inbox reads one recipient's notifications newest first, by (inserted_at, id). Every index
-- below is partial on the state it serves, so a query reads only rows it may return, however long
-- the recipient's history, and a new notification (unread, unseen, not archived) enters three of
-- them (the live inbox, the unread inbox, the change feed), four with a category. 0001's index,
-- unread-first, is replaced.
DROP INDEX chimeway_notifications_inbox_idx;

-- The inbox as it shows by default: everything not archived, newest first (scanned backwards).
CREATE INDEX chimeway_notifications_inbox_idx
    ON chimeway_notifications (recipient_identity, inserted_at, id)
    WHERE archived_at IS NULL;

-- One category of it (a tab of the inbox). Filtering the index above instead reads every row of
-- the recipient when the category is rare among many (measured: a 20,000-row recipient's rare
-- category read all its rows); notifications without a category never enter this one.
CREATE INDEX chimeway_notifications_category_idx
    ON chimeway_notifications (recipient_identity, category, inserted_at, id)
    WHERE archived_at IS NULL AND category IS NOT NULL;

-- The unread inbox, and both counts in one index-only scan: unread = its rows, unseen = its rows
-- with no seen_at (a notification already read does not count as unseen).
CREATE INDEX chimeway_notifications_unread_idx
    ON chimeway_notifications (recipient_identity, inserted_at, id) INCLUDE (seen_at)
    WHERE read_at IS NULL AND archived_at IS NULL;

-- The archive. With the live inbox it serves include_archived (a merge of the two, newest first).
-- New notifications are not archived, so inserting them never touches this index.
CREATE INDEX chimeway_notifications_archived_idx
    ON chimeway_notifications (recipient_identity, inserted_at, id)
    WHERE archived_at IS NOT NULL;

-- The change feed: one recipient's rows by the transaction that last changed them.
CREATE INDEX chimeway_notifications_changes_idx
    ON chimeway_notifications (recipient_identity, changed_xid, id);

-- A change made by any UPDATE, through chimeway.inbox or not, moves the row in the change feed.
-- (The WHEN clause keeps an UPDATE that changes nothing the inbox shows from calling the function.)
CREATE FUNCTION chimeway_notifications_stamp_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.changed_xid := pg_current_xact_id()::text::bigint;
    RETURN NEW;
END;
$$;

CREATE TRIGGER chimeway_notifications_stamp_change
    BEFORE UPDATE OF seen_at, read_at, archived_at, category, metadata ON chimeway_notifications
    FOR EACH ROW
    WHEN ((NEW.seen_at, NEW.read_at, NEW.archived_at, NEW.category, NEW.metadata)
          IS DISTINCT FROM (OLD.seen_at, OLD.read_at, OLD.archived_at, OLD.category, OLD.metadata))
    EXECUTE FUNCTION chimeway_notifications_stamp_change();

-- The change feed's horizon, as this statement's snapshot sees it: the oldest transaction that
-- may still commit a change to this database's notifications (the caller's own, if it has
-- written; else the oldest of this database still running), or the next transaction id when
-- none is. A change stamped below the horizon can never again appear: chimeway.inbox reads only
-- those, so none is skipped for committing late. A transaction of another database can't write
-- here, so one left open there holds nothing back (it is known by its entry in pg_stat_activity;
-- one found nowhere, a prepared transaction say, counts as this database's).
CREATE FUNCTION chimeway_inbox_horizon() RETURNS bigint
-- PL/pgSQL caches the plan for the session; STABLE, so it reads with the caller's snapshot.
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
        SELECT least(
            pg_current_xact_id_if_assigned()::text::bigint,
            coalesce(
                (SELECT min(running::text::bigint)
                 FROM pg_snapshot_xip(snapshot) AS running
                 -- (read only when some transaction is running: one pass over the backends)
                 WHERE xid(running) NOT IN (
                     SELECT elsewhere.backend_xid
                     FROM pg_stat_get_activity(NULL) AS elsewhere
                     WHERE elsewhere.backend_xid IS NOT NULL
                       AND elsewhere.datid <> (SELECT oid FROM pg_database WHERE datname = current_database())
                 )),
                pg_snapshot_xmax(snapshot)::text::bigint
            )
        )
        FROM pg_current_snapshot() AS snapshot
    );
END;
$$;

-- The NOTIFY channel of a recipient's inbox changes: the schema's hash and one of 4,096 buckets
-- of the identity's hash, e.g. 'chimeway_inbox_1b2c3d4e_7f0' (27 bytes, under the 63-byte limit).
-- No identity can be read back from it. A bucket is shared by about 1/4,096 of the recipients:
-- a listener that wakes for another recipient of its bucket asks the feed and finds nothing new.
-- Buckets bound the NOTIFYs of one statement: inserting 100,000 notifications sends at most
-- 4,096, where one channel per recipient would send 100,000 (each also checked by every
-- listening backend against each channel it listens on).
CREATE FUNCTION chimeway_inbox_channel(schema_name text, identity text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT 'chimeway_inbox_' || to_hex(hashtext(schema_name) & 2147483647)
        || '_' || to_hex(hashtext(identity) & 4095)
$$;

-- Once per statement, whatever the number of rows: one NOTIFY per channel of the rows the
-- statement created or changed (PostgreSQL also folds repeats within a transaction into one).
-- The payload is empty: a NOTIFY only says "ask the feed". Its search_path is the one it was
-- created with, so it finds chimeway_inbox_channel whatever the caller's search_path.
CREATE FUNCTION chimeway_notifications_notify_change() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    current_xid bigint := pg_current_xact_id()::text::bigint;
BEGIN
    PERFORM pg_notify(channel, '')
    FROM (
        SELECT DISTINCT chimeway_inbox_channel(TG_TABLE_SCHEMA::text, recipient_identity) AS channel
        FROM changed_rows
        WHERE changed_xid = current_xid
    ) AS channels;
    RETURN NULL;
END;
$$;

-- Statement-level with a transition table: a set-wise insert of 100,000 notifications runs the
-- function once. (A trigger with a transition table can't name columns or two events: hence
-- two triggers, and the UPDATE one keeps only the rows whose change stamp this transaction set.)
CREATE TRIGGER chimeway_notifications_notify_insert
    AFTER INSERT ON chimeway_notifications
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chimeway_notifications_notify_change();

CREATE TRIGGER chimeway_notifications_notify_update
    AFTER UPDATE ON chimeway_notifications
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION chimeway_notifications_notify_change();
