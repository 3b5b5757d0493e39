-- Make the jobs just inserted members of a batch and count them, in the inserting transaction, so
-- no member can finish before it is counted. A job that already belongs to a batch (a unique
-- conflict returned an existing job) is not taken over. meta.batch_id tells the node that runs a
-- member to write its ack with the batches' accounting (the `_batched` fetch statements).
WITH members AS (
    UPDATE {jobs}
    SET batch_id = %(id)s,
        meta = meta || jsonb_build_object('batch_id', %(id)s::bigint)
    WHERE id = ANY (%(ids)s::bigint[]) AND batch_id IS NULL
    RETURNING id
)
UPDATE {batches}
SET total = total + (SELECT count(*) FROM members)
WHERE id = %(id)s
RETURNING total
