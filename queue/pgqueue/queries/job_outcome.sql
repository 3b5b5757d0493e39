-- What pgqueue.wait reads of the awaited job: its state, its result and its last recorded error.
SELECT state::text, result, errors -> -1 ->> 'error', errors
FROM {jobs}
WHERE id = %(id)s
