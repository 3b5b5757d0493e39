-- Lock a batch before adding members: an ack finishing its last member waits for this transaction
-- (or this one waits for it and then sees the batch finished and refuses).
SELECT finished_at IS NOT NULL
FROM {batches}
WHERE id = %(id)s
FOR UPDATE
