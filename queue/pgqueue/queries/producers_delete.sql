-- Producers that stopped say goodbye, so the lifeline rescues what they left at once.
DELETE FROM {producers} WHERE uuid = ANY (%(uuid)s::uuid[])
