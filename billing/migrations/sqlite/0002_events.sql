-- Domain events' addressees and the relay's position (see migrations/postgres/0002_events.sql).
CREATE TABLE event_parties (
    account TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (account, seq)
) WITHOUT ROWID;

CREATE TABLE relay_positions (
    name       TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
);
