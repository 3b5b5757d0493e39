-- The batches half of the acks (acks.part.sql), included where it writes {{batch_acks_part}}: count
-- the members this statement finished into their batches, and insert each callback in the
-- statement whose counts cross its threshold.
--
-- Exactly once: the counters move under the batch row's lock (a concurrent ack of the same batch
-- waits, then adds to the newest counts), the fence lets a job's attempt finish once, and the
-- callbacks commit with the acks or not at all. `completed` fires when every member completed,
-- `discarded` when the first one is discarded, `finished` when every member is in a final state.
batch_counts AS (
    UPDATE {batches} AS b
    SET completed = b.completed + c.completed,
        discarded = b.discarded + c.discarded,
        cancelled = b.cancelled + c.cancelled,
        finished_at = CASE WHEN b.finished_at IS NULL AND b.total > 0
                                AND b.completed + b.discarded + b.cancelled
                                    + c.completed + c.discarded + c.cancelled >= b.total
                           THEN now() ELSE b.finished_at END
    FROM (SELECT batch_id,
                 count(*) FILTER (WHERE state::text = 'completed') AS completed,
                 count(*) FILTER (WHERE state::text = 'discarded') AS discarded,
                 count(*) FILTER (WHERE state::text = 'cancelled') AS cancelled
          FROM acked
          WHERE batch_id IS NOT NULL AND state::text IN ('completed', 'discarded', 'cancelled')
          GROUP BY batch_id) AS c
    WHERE b.id = c.batch_id
    RETURNING b.id, b.total, b.on_completed, b.on_discarded, b.on_finished,
              b.completed - c.completed < b.total AND b.completed >= b.total AS all_completed,
              b.discarded - c.discarded = 0 AND b.discarded > 0 AS first_discarded,
              b.completed + b.discarded + b.cancelled - c.completed - c.discarded - c.cancelled < b.total
                  AND b.completed + b.discarded + b.cancelled >= b.total AS all_finished
),
batch_callbacks AS (
    INSERT INTO {jobs} (state, queue, worker, args, meta, tags, priority, max_attempts)
    SELECT 'available', cb.spec ->> 'queue', cb.spec ->> 'worker', cb.spec -> 'args',
           (cb.spec -> 'meta') || jsonb_build_object('batch', jsonb_build_object('id', bc.id, 'event', cb.event)),
           ARRAY(SELECT jsonb_array_elements_text(cb.spec -> 'tags')),
           (cb.spec ->> 'priority')::smallint, (cb.spec ->> 'max_attempts')::integer
    FROM batch_counts AS bc
    CROSS JOIN LATERAL (VALUES ('completed', bc.on_completed, bc.all_completed),
                               ('discarded', bc.on_discarded, bc.first_discarded),
                               ('finished', bc.on_finished, bc.all_finished)) AS cb(event, spec, fire)
    WHERE cb.fire AND cb.spec IS NOT NULL
    -- Callbacks are rare: one wake-up per callback job, sent at commit like an insert's.
    RETURNING queue, pg_notify({insert_channel}, json_build_object('queue', queue)::text)
),
