-- Election, step 2 (same transaction as leader_delete_expired): claim the lease, or extend it when
-- this node already holds it. The WHERE on the conflict branch is the fence: a node never extends a
-- lease another node holds, so a row comes back exactly when this node leads.
INSERT INTO {leaders} AS leaders (name, node, elected_at, expires_at)
VALUES (%(name)s, %(node)s, now(), now() + %(interval)s * interval '1 second')
ON CONFLICT (name) DO UPDATE SET expires_at = excluded.expires_at
    WHERE leaders.node = excluded.node
RETURNING node
