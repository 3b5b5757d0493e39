-- What pgqueue.wait reads of the awaited job: its state, its result, its last recorded error, all
-- its errors, and whether a waiter has marked it awaited already.
SELECT state::text, result, errors -> -1 ->> 'error', errors, coalesce(awaited, false)
FROM {jobs}
WHERE id = %(id)s
