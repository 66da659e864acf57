-- The same ledger in SQLite (the embedded default). SQLite has no deferred triggers, so the
-- balance rule is enforced by ordering: an entry's legs are inserted first, then the entry
-- row, whose BEFORE INSERT trigger refuses it unless its legs sum to zero; a leg for an entry
-- that already exists is refused; a leg without its entry fails the deferred foreign key at
-- commit. Money rows are append-only.

CREATE TABLE accounts (
    id                 TEXT PRIMARY KEY,
    kind               TEXT NOT NULL CHECK (kind IN ('buyer', 'publisher')),
    name               TEXT NOT NULL,
    key_digest         TEXT NOT NULL UNIQUE,
    credit_limit_cents INTEGER NOT NULL DEFAULT 0 CHECK (credit_limit_cents >= 0),
    created_ns         INTEGER NOT NULL
);

CREATE TABLE entries (
    id        INTEGER PRIMARY KEY,
    reference TEXT NOT NULL,
    kind      TEXT NOT NULL CHECK (kind IN ('charge', 'deposit', 'payout', 'refund')),
    at_ns     INTEGER NOT NULL,
    memo      TEXT NOT NULL DEFAULT '',
    UNIQUE (reference, kind)
);
CREATE INDEX entries_at_idx ON entries (at_ns);

CREATE TABLE legs (
    entry_id     INTEGER NOT NULL REFERENCES entries (id) DEFERRABLE INITIALLY DEFERRED,
    account      TEXT NOT NULL,
    amount_cents INTEGER NOT NULL
);
CREATE INDEX legs_entry_idx ON legs (entry_id);
CREATE INDEX legs_account_idx ON legs (account, entry_id);

CREATE TABLE balances (
    account       TEXT PRIMARY KEY,
    balance_cents INTEGER NOT NULL
);

CREATE TABLE holds (
    call_id      TEXT NOT NULL,
    route_index  INTEGER NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('hold', 'capture', 'release')),
    account      TEXT NOT NULL,
    amount_cents INTEGER NOT NULL CHECK (amount_cents >= 0),
    at_ns        INTEGER NOT NULL,
    PRIMARY KEY (call_id, route_index, kind)
);

CREATE TABLE call_outcomes (
    call_id       TEXT PRIMARY KEY,
    publisher     TEXT NOT NULL,
    buyer         TEXT NOT NULL,
    campaign      TEXT NOT NULL,
    status        TEXT NOT NULL,
    billable      INTEGER NOT NULL,
    price_cents   INTEGER NOT NULL,
    charged_cents INTEGER NOT NULL,
    payout_cents  INTEGER NOT NULL,
    margin_cents  INTEGER NOT NULL,
    created_ns    INTEGER NOT NULL,
    final_ns      INTEGER NOT NULL
);
CREATE INDEX call_outcomes_final_idx ON call_outcomes (final_ns);

CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    at_ns     INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    call_id   TEXT,
    number    TEXT,
    body      TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL
);
CREATE INDEX audit_call_idx ON audit (call_id) WHERE call_id IS NOT NULL;
CREATE INDEX audit_number_idx ON audit (number, at_ns) WHERE number IS NOT NULL;
CREATE INDEX audit_at_idx ON audit (at_ns);

CREATE TRIGGER entries_balanced BEFORE INSERT ON entries
WHEN (SELECT coalesce(sum(amount_cents), 0) <> 0 OR count(*) < 2 FROM legs WHERE entry_id = NEW.id)
BEGIN SELECT RAISE(ABORT, 'unbalanced entry: its legs do not sum to zero'); END;

CREATE TRIGGER legs_sealed BEFORE INSERT ON legs
WHEN EXISTS (SELECT 1 FROM entries WHERE id = NEW.entry_id)
BEGIN SELECT RAISE(ABORT, 'entry is sealed: legs cannot be added to a posted entry'); END;

CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries BEGIN SELECT RAISE(ABORT, 'entries is append-only: UPDATE refused'); END;
CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries BEGIN SELECT RAISE(ABORT, 'entries is append-only: DELETE refused'); END;
CREATE TRIGGER legs_no_update BEFORE UPDATE ON legs BEGIN SELECT RAISE(ABORT, 'legs is append-only: UPDATE refused'); END;
CREATE TRIGGER legs_no_delete BEFORE DELETE ON legs BEGIN SELECT RAISE(ABORT, 'legs is append-only: DELETE refused'); END;
CREATE TRIGGER holds_no_update BEFORE UPDATE ON holds BEGIN SELECT RAISE(ABORT, 'holds is append-only: UPDATE refused'); END;
CREATE TRIGGER holds_no_delete BEFORE DELETE ON holds BEGIN SELECT RAISE(ABORT, 'holds is append-only: DELETE refused'); END;
CREATE TRIGGER call_outcomes_no_update BEFORE UPDATE ON call_outcomes BEGIN SELECT RAISE(ABORT, 'call_outcomes is append-only: UPDATE refused'); END;
CREATE TRIGGER call_outcomes_no_delete BEFORE DELETE ON call_outcomes BEGIN SELECT RAISE(ABORT, 'call_outcomes is append-only: DELETE refused'); END;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only: UPDATE refused'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only: DELETE refused'); END;
