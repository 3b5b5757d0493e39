-- Lock the existing jobs a workflow insert depends on, in id order, until the inserting transaction
-- ends: none of them can finish between this read and the commit of the edges that point at it,
-- so a dependent can never miss its release. The ids that come back exist; the rest are missing.
SELECT id, state::text
FROM {jobs}
WHERE id = ANY (%(ids)s::bigint[])
ORDER BY id
FOR UPDATE
