-- Undo chimeway 0001: drops every event, notification, delivery, attempt and preference.
-- Applied with search_path set to the target schema.
DROP TABLE IF EXISTS chimeway_category_preferences;
DROP TABLE IF EXISTS chimeway_notification_preferences;
DROP TABLE IF EXISTS chimeway_delivery_attempts;
DROP FUNCTION IF EXISTS chimeway_delivery_attempts_append_only();
DROP TABLE IF EXISTS chimeway_deliveries;
DROP TABLE IF EXISTS chimeway_notifications;
DROP TABLE IF EXISTS chimeway_events;
