-- Mark an unfinished job awaited, so the ack that finishes it sends a wake-up (acks.part.sql). A
-- write on the row, not a row elsewhere: the row lock orders it against that ack. If the ack came
-- first, this waits for its commit, re-checks the state and updates nothing (the caller re-reads).
-- A producer whose fetch met the row locked here skipped it: an available job wakes its queue
-- again, as an insert does.
WITH marked AS (
    UPDATE {jobs}
    SET awaited = true
    WHERE id = %(id)s AND state NOT IN ('completed', 'discarded', 'cancelled')
    RETURNING id, queue, state
)
SELECT id, CASE WHEN state = 'available'
                THEN pg_notify({insert_channel}, json_build_object('queue', queue)::text) END
FROM marked
