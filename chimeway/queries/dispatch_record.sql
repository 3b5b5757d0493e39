-- The dispatch worker's second statement for a batch: record every attempt and move every
-- delivery where its attempt leads, in one transaction, as chimeway.deliveries.record_attempt
-- (and, on the final attempt, exhaust_delivery) would one at a time:
--
--   attempt                      delivery was            delivery becomes
--   succeeded                    dispatched              succeeded
--   failed/temporary,            dispatched              failed; on the final attempt
--   rejected/unknown_class.      (or failed already)     cancelled / retries_exhausted
--   rejected/permanent           dispatched or failed    cancelled / permanent_failure
--   bounced/bounced              dispatched or failed    cancelled / bounced
--   permanent or bounced         cancelled already       unchanged (the attempt is still recorded)
--
-- A delivery in any other status (pending, or ended another way) is left alone and gets no
-- attempt: the caller re-reads it and reports the refused transition. Endings merge
-- {"policy_checkpoint": "perform"} into the row's own metadata, so keys written meanwhile survive.
--
-- Items arrive as one JSON array (id, outcome, error_class, response, message_id, adapter, final):
-- encoding it is one orjson call, where psycopg would dump seven parallel arrays in Python.
-- The UPDATE takes each delivery's row lock before its attempt is numbered: count + 1, counted
-- in this statement's snapshot. A concurrent recorder of the same delivery that committed while
-- this one waited for the lock makes that count stale: the unique (delivery_id, attempt_number)
-- then refuses the insert and the caller re-runs the statement, which counts afresh. Numbers stay
-- 1, 2, 3, … without gaps or repeats.
WITH items AS (
    SELECT i.*,
           coalesce(i.error_class IN ('permanent', 'bounced'), false) AS ending,
           CASE WHEN i.outcome = 'succeeded' THEN 'succeeded' ELSE 'failed' END AS target
    FROM json_to_recordset(%(items)s::json)
        AS i(id uuid, outcome text, error_class text, response jsonb, message_id text, adapter text,
             final boolean)
),
moved AS (
    UPDATE {deliveries} AS d
    SET status = CASE WHEN i.ending OR (i.target = 'failed' AND i.final) THEN 'cancelled'
                      ELSE i.target END,
        suppression_reason = CASE WHEN i.ending AND d.status = 'cancelled' THEN d.suppression_reason
                                  WHEN i.error_class = 'permanent' THEN 'permanent_failure'
                                  WHEN i.error_class = 'bounced' THEN 'bounced'
                                  WHEN i.target = 'failed' AND i.final THEN 'retries_exhausted'
                                  ELSE d.suppression_reason END,
        metadata = CASE WHEN (i.ending AND d.status <> 'cancelled')
                              OR (NOT i.ending AND i.target = 'failed' AND i.final)
                        THEN d.metadata || '{{"policy_checkpoint": "perform"}}'::jsonb
                        ELSE d.metadata END,
        updated_at = CASE WHEN d.status = 'dispatched'
                               OR (i.ending AND d.status = 'failed')
                               OR (NOT i.ending AND i.target = 'failed' AND i.final)
                          THEN now() ELSE d.updated_at END
    FROM items AS i
    WHERE d.id = i.id
      AND (d.status = 'dispatched'
           OR (i.ending AND d.status IN ('failed', 'cancelled'))
           OR (NOT i.ending AND d.status = i.target))
    RETURNING d.id, d.status, d.suppression_reason
),
inserted AS (
    INSERT INTO {attempts}
        (delivery_id, attempt_number, outcome, error_class, provider_response, provider_message_id, adapter)
    SELECT i.id,
           (SELECT count(*) FROM {attempts} AS a WHERE a.delivery_id = i.id) + 1,
           i.outcome, i.error_class, i.response, i.message_id, i.adapter
    FROM items AS i
    JOIN moved AS m ON m.id = i.id
    RETURNING id, delivery_id, attempt_number
)
SELECT m.id, m.status, m.suppression_reason, ins.id AS attempt_id, ins.attempt_number
FROM moved AS m
JOIN inserted AS ins ON ins.delivery_id = m.id
