-- Webhooks (exchange.webhooks): endpoints per tenant, where each has got to in its events,
-- the retries due, and the delivery log. Not money: written outside the ledger writer.
CREATE TABLE webhooks (
    id              text PRIMARY KEY,
    account         text NOT NULL,            -- the owner (a buyer or publisher id, or 'operator')
    url             text NOT NULL,
    events          text NOT NULL,            -- comma-separated event types ('' = all)
    secret          text NOT NULL,
    created_ns      bigint NOT NULL,
    position        text NOT NULL,            -- the last event id handed to delivery
    failures        bigint NOT NULL DEFAULT 0,  -- failed attempts in a row
    disabled_ns     bigint,
    disabled_reason text
);
CREATE INDEX webhooks_account_idx ON webhooks (account);

CREATE TABLE webhook_retries (
    webhook_id text NOT NULL,
    event_id   text NOT NULL,
    attempt    bigint NOT NULL,                 -- the attempt this retry will be
    due_ns     bigint NOT NULL,
    PRIMARY KEY (webhook_id, event_id)
);

CREATE TABLE webhook_deliveries (
    webhook_id  text NOT NULL,
    event_id    text NOT NULL,
    attempt     bigint NOT NULL,
    at_ns       bigint NOT NULL,
    ok          boolean NOT NULL,
    http_status bigint,
    error       text,
    duration_ms bigint NOT NULL,
    next_ns     bigint                          -- when it is tried again (NULL: not again)
);
CREATE INDEX webhook_deliveries_idx ON webhook_deliveries (webhook_id, at_ns);
