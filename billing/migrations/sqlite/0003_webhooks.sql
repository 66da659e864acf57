-- Webhooks (exchange.webhooks): endpoints per tenant, where each has got to in its events,
-- the retries due, and the delivery log. Not money: written outside the ledger writer.
CREATE TABLE webhooks (
    id              TEXT PRIMARY KEY,
    account         TEXT NOT NULL,            -- the owner (a buyer or publisher id, or 'operator')
    url             TEXT NOT NULL,
    events          TEXT NOT NULL,            -- comma-separated event types ('' = all)
    secret          TEXT NOT NULL,
    created_ns      INTEGER NOT NULL,
    position        TEXT NOT NULL,            -- the last event id handed to delivery
    failures        INTEGER NOT NULL DEFAULT 0,  -- failed attempts in a row
    disabled_ns     INTEGER,
    disabled_reason TEXT
);
CREATE INDEX webhooks_account_idx ON webhooks (account);

CREATE TABLE webhook_retries (
    webhook_id TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    attempt    INTEGER NOT NULL,                 -- the attempt this retry will be
    due_ns     INTEGER NOT NULL,
    PRIMARY KEY (webhook_id, event_id)
);

CREATE TABLE webhook_deliveries (
    webhook_id  TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    at_ns       INTEGER NOT NULL,
    ok          INTEGER NOT NULL,
    http_status INTEGER,
    error       TEXT,
    duration_ms INTEGER NOT NULL,
    next_ns     INTEGER                          -- when it is tried again (NULL: not again)
);
CREATE INDEX webhook_deliveries_idx ON webhook_deliveries (webhook_id, at_ns);
