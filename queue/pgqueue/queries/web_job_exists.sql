-- Whether a job still exists and its state now, to explain an action that changed nothing.
SELECT state::text FROM {jobs} WHERE id = %(id)s
