-- Who leads now: the holder of an unexpired lease (an expired one leads nobody; the next election
-- takes it over).
SELECT node FROM {leaders} WHERE name = %(name)s AND expires_at > now()
