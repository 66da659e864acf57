-- The delivery worker (exchange.deliver) runs in its own process: it follows the records past
-- its tail by seq (this index), and marks an endpoint it disabled; the exchange records the
-- webhook.disabled notice on the audit trail and sets noticed_ns (the audit trail has one writer).
CREATE INDEX event_parties_seq_idx ON event_parties (seq);
ALTER TABLE webhooks ADD COLUMN noticed_ns INTEGER;
UPDATE webhooks SET noticed_ns = disabled_ns WHERE disabled_ns IS NOT NULL;
