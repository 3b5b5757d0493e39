-- The channel of a pending delivery, for the hand-off of deliveries on rate-limited channels to
-- their account's queue (see chimeway/dispatch/limits.py). No row: not pending, or gone; the
-- ordinary dispatch path then decides what to do with it.
SELECT channel
FROM {deliveries}
WHERE id = %(id)s::uuid AND status = 'pending'
