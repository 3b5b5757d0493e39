-- Run through SQLAlchemy, not the driver, when SQLAlchemy sits on asyncpg: its adapter opens the
-- asyncpg transaction lazily, at its first statement, and commits or rolls back only a transaction
-- it opened. This statement makes it open the one the jobs are then written in.
SELECT 1
