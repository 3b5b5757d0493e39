-- Deliveries per channel and status, for the dashboard's summary.
SELECT channel, status, count(*) FROM {deliveries} GROUP BY channel, status ORDER BY channel, status
