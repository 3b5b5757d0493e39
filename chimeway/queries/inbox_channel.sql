-- The NOTIFY channel of one recipient's inbox changes (the function is in sql/chimeway/0002).
SELECT {inbox_channel}(%(schema)s, %(identity)s)
