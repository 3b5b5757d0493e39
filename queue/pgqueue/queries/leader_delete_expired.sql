-- Election, step 1: drop the lease if it has run out, so step 2 can claim it. Expiry is judged by
-- the database clock, so peers with skewed clocks agree on it.
DELETE FROM {leaders} WHERE name = %(name)s AND expires_at < now()
