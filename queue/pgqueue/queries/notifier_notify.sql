-- Publish one notification. pg_notify() instead of NOTIFY because it takes the channel and the
-- payload as parameters: nothing is spliced into the SQL. Inside a transaction it is delivered at
-- commit; on an autocommit connection, at once.
SELECT pg_notify(%(channel)s, %(payload)s)
