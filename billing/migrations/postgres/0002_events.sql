-- Domain events (billing.events) are derived from the audit trail, the outbox written in the
-- same transaction as the ledger. This index addresses them: (account, seq) for every audit
-- record with an event for that buyer or publisher, written by the writer in the same
-- statement as the record, so a tenant's replay reads its own records only.
CREATE TABLE event_parties (
    account text COLLATE "C" NOT NULL,
    seq     bigint NOT NULL,
    PRIMARY KEY (account, seq)
);

-- Where each relay (the bus publisher) has got to: every event of the audit records up to
-- seq is acknowledged by the bus.
CREATE TABLE relay_positions (
    name       text PRIMARY KEY,
    seq        bigint NOT NULL,
    updated_ns bigint NOT NULL
);
