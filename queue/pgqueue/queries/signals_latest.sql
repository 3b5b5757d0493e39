-- Where a booting node starts reading signals: after the newest one. Older rows were meant for the
-- nodes running when they were sent; replaying them at boot would undo the node's own settings.
SELECT coalesce(max(id), 0) FROM {signals}
