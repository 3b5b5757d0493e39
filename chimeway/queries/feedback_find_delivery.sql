-- The delivery a provider's message id belongs to: the latest attempt of this adapter that
-- recorded it (the partial index on provider_message_id finds it).
SELECT delivery_id
FROM {attempts}
WHERE provider_message_id = %(provider_message_id)s AND adapter = %(adapter)s
ORDER BY inserted_at DESC
LIMIT 1
