-- A new, empty batch; its members are added by batch_add.sql in the same transaction.
INSERT INTO {batches} (on_completed, on_discarded, on_finished, meta)
VALUES (%(on_completed)s::jsonb, %(on_discarded)s::jsonb, %(on_finished)s::jsonb, %(meta)s::jsonb)
RETURNING id
