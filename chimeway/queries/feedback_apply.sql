-- Apply one provider event to its delivery, once. The row lock serialises concurrent copies of
-- the event; the containment test on the delivery's provider_feedback list makes a replay a no-op
-- (no row returned); the status changes only from the states a bounce may end (compare-and-set),
-- and updated_at moves only with it (explain dates the final status by it). The list keeps the
-- latest %(keep)s events.
WITH target AS (
    SELECT id, status, metadata
    FROM {deliveries}
    WHERE id = %(delivery_id)s
    FOR UPDATE
), fresh AS (
    SELECT id, status, coalesce(metadata -> 'provider_feedback', '[]'::jsonb) AS seen,
           %(cancel)s AND status = ANY(%(cancellable)s) AS ends
    FROM target
    WHERE NOT coalesce(metadata -> 'provider_feedback', '[]'::jsonb)
              @> jsonb_build_array(jsonb_build_object('adapter', %(adapter)s::text,
                                                      'provider_event_id', %(event_id)s::text))
)
UPDATE {deliveries} d
SET status = CASE WHEN f.ends THEN 'cancelled' ELSE d.status END,
    suppression_reason = CASE WHEN f.ends THEN %(reason)s ELSE d.suppression_reason END,
    updated_at = CASE WHEN f.ends THEN now() ELSE d.updated_at END,
    metadata = jsonb_set(
        d.metadata,
        '{{provider_feedback}}',
        (CASE WHEN jsonb_array_length(f.seen) >= %(keep)s THEN f.seen - 0 ELSE f.seen END)
        || jsonb_build_array(jsonb_build_object(
               'type', %(type)s::text,
               'adapter', %(adapter)s::text,
               'provider_event_id', %(event_id)s::text,
               'at', now())))
FROM fresh f
WHERE d.id = f.id
RETURNING d.status, d.suppression_reason, f.status
