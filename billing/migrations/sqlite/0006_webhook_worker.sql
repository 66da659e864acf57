-- The delivery worker (exchange.deliver) runs in its own process and marks an endpoint it
-- disabled; the exchange records the webhook.disabled notice on the audit trail (which has one
-- writer) and then sets noticed_ns.
ALTER TABLE webhooks ADD COLUMN noticed_ns INTEGER;
UPDATE webhooks SET noticed_ns = disabled_ns WHERE disabled_ns IS NOT NULL;
