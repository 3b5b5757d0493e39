-- The recovery plugin's record of a re-drive, in the transaction that inserted the new dispatch
-- job: why (`job_missing` or `job_finished`), by whom, when (ISO-8601, microseconds, "Z", as
-- Elixir Chimeway writes it) and the new job's id, merged into the row's own metadata. Still a
-- compare-and-set on `dispatched`; updated_at moves, so the next round leaves it to the new job.
UPDATE {deliveries} AS d
SET metadata = d.metadata || jsonb_build_object(
        'recovery_source', 'recovery_plugin',
        'recovery_reason', r.reason,
        'recovered_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'recovery_job_id', r.job_id),
    updated_at = now()
FROM unnest(%(ids)s::uuid[], %(reasons)s::text[], %(jobs)s::bigint[]) AS r (id, reason, job_id)
WHERE d.id = r.id
  AND d.status = 'dispatched'
RETURNING d.id
