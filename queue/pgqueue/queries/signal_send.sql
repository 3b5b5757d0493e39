-- Send one queue-control signal. The row is the command; the notification carries only its id and
-- merely wakes the nodes, which read the command from the table (a role that can only connect can
-- notify, but can't write here). Inside a transaction both take effect at commit.
WITH sent AS (
    INSERT INTO {signals} (action, queue, node, params)
    VALUES (%(action)s, %(queue)s, %(node)s, %(params)s::jsonb)
    RETURNING id
)
SELECT sent.id, pg_notify(%(channel)s, json_build_object('id', sent.id)::text)
FROM sent
