-- A unique job whose period has passed no longer blocks new ones: it gives up its key.
UPDATE {jobs} SET unique_key = NULL, unique_states = NULL WHERE id = ANY (%(ids)s::bigint[])
