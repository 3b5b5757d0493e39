-- A stopping leader gives up its lease at once, so a follower can take over without waiting for it
-- to expire. Scoped to this node: never delete a lease someone else holds. A returned row means
-- there was a lease to give up, and so news for the followers.
DELETE FROM {leaders} WHERE name = %(name)s AND node = %(node)s RETURNING node
