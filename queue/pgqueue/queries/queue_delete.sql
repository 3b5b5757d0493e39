-- Forget a declared queue and its admission state (its jobs stay where they are).
WITH forgotten AS (
    DELETE FROM {limit_state} WHERE queue = %(name)s
)
DELETE FROM {queues}
WHERE name = %(name)s
RETURNING name
