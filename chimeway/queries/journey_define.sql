-- Journeys: store a definition once per key and version (a trigger of its notifier calls this),
-- and return the stored row, new or not, for the caller to compare with its own: a changed
-- definition under an old version is refused. A concurrent first insert is waited for by ON
-- CONFLICT; its row is then invisible to this statement's snapshot and the caller runs it again.
WITH inserted AS (
    INSERT INTO {journey_definitions}
        (journey_key, journey_version, notification_key, steps, end_on, advance_on, stop_when_read)
    VALUES (%(key)s, %(version)s, %(notification_key)s, %(steps)s::jsonb, %(end_on)s::text[],
            %(advance_on)s::text[], %(stop_when_read)s)
    ON CONFLICT (journey_key, journey_version) DO NOTHING
    RETURNING id, notification_key, steps::text, end_on, advance_on, stop_when_read
)
SELECT * FROM inserted
UNION ALL
SELECT id, notification_key, steps::text, end_on, advance_on, stop_when_read
FROM {journey_definitions}
WHERE journey_key = %(key)s AND journey_version = %(version)s AND NOT EXISTS (SELECT FROM inserted)
