-- How many jobs each queue has in each state (for `python -m pgqueue status`).
SELECT queue, state::text, count(*) FROM {jobs} GROUP BY queue, state ORDER BY queue, state
