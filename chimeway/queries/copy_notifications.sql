-- Fan-out, step 1 (chimeway.planning): one notification per recipient, streamed while the notifier
-- builds the next recipients' content. COPY because the server takes its rows several times faster
-- than unpacking the same rows from arrays or JSON; the ids come from the client, so the deliveries
-- can name their notification without reading anything back. inserted_at, updated_at and the inbox
-- timestamps keep their defaults. The category (the notifier's, else the params') is what the inbox
-- filters on; changed_xid is left to its default, the inserting transaction.
COPY {notifications} (id, event_id, recipient_identity, recipient_type, metadata, category) FROM STDIN
