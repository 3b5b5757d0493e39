-- Of these jobs (running on the asking node), the ones the database says are cancelled. A pkill
-- signal stops a running job only after this says so: the database, not the signal, decides.
SELECT id
FROM {jobs}
WHERE id = ANY (%(ids)s::bigint[]) AND state = 'cancelled'
