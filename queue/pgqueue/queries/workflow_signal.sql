-- Send a signal: the same function SQL callers use, so both paths are one implementation.
SELECT {signal_function}(%(name)s, %(payload)s::jsonb)
