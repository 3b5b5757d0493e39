-- Undo chimeway 0002: the change feed's triggers and functions, the inbox indexes, the category
-- and change stamp columns (their values are lost); 0001's inbox index comes back.
-- Applied with search_path set to the target schema.
DROP TRIGGER IF EXISTS chimeway_notifications_notify_update ON chimeway_notifications;
DROP TRIGGER IF EXISTS chimeway_notifications_notify_insert ON chimeway_notifications;
DROP FUNCTION IF EXISTS chimeway_notifications_notify_change();
DROP FUNCTION IF EXISTS chimeway_inbox_channel(text, text);
DROP FUNCTION IF EXISTS chimeway_inbox_horizon();
DROP TRIGGER IF EXISTS chimeway_notifications_stamp_change ON chimeway_notifications;
DROP FUNCTION IF EXISTS chimeway_notifications_stamp_change();
DROP INDEX IF EXISTS chimeway_notifications_changes_idx;
DROP INDEX IF EXISTS chimeway_notifications_archived_idx;
DROP INDEX IF EXISTS chimeway_notifications_unread_idx;
DROP INDEX IF EXISTS chimeway_notifications_category_idx;
DROP INDEX IF EXISTS chimeway_notifications_inbox_idx;
ALTER TABLE chimeway_notifications DROP COLUMN IF EXISTS changed_xid;
ALTER TABLE chimeway_notifications DROP CONSTRAINT IF EXISTS chimeway_notifications_category_not_blank;
ALTER TABLE chimeway_notifications DROP COLUMN IF EXISTS category;
CREATE INDEX chimeway_notifications_inbox_idx
    ON chimeway_notifications (recipient_identity, read_at, inserted_at);
