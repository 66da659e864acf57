-- The double-entry ledger, holds, call outcomes, accounts and the audit chain (PostgreSQL).
-- Money rows are append-only: triggers refuse UPDATE, DELETE and TRUNCATE. An entry whose
-- legs do not sum to zero is refused at commit by a deferred constraint trigger, and legs can
-- be added only to an entry created in the same transaction (checked once per statement), so
-- an entry that balanced at commit stays balanced.
--
-- Entry ids come from a sequence that steps by 65,536: one nextval() reserves a block, so the
-- group-commit writer numbers its entries itself and sends each leg with its entry's id (no
-- join on text keys); an INSERT that relies on the default takes a block for one entry. Ids
-- increase in posting order and are not dense.
--
-- Keys and ids are text COLLATE "C": compared byte by byte (cheaper in every index insert,
-- and a LIKE 'prefix%' can use the index). Times are indexed with BRIN: rows arrive in time
-- order, so a block range summary serves time-range scans at a fraction of a B-tree's cost
-- per insert.

CREATE TABLE accounts (
    id                 text COLLATE "C" PRIMARY KEY,
    kind               text NOT NULL CHECK (kind IN ('buyer', 'publisher')),
    name               text NOT NULL,
    key_digest         text COLLATE "C" NOT NULL UNIQUE,
    credit_limit_cents bigint NOT NULL DEFAULT 0 CHECK (credit_limit_cents >= 0),
    created_ns         bigint NOT NULL
);

CREATE SEQUENCE entries_id_seq AS bigint INCREMENT BY 65536 START WITH 1;

CREATE TABLE entries (
    id        bigint PRIMARY KEY DEFAULT nextval('entries_id_seq'),
    reference text COLLATE "C" NOT NULL,
    kind      text NOT NULL CHECK (kind IN ('charge', 'deposit', 'payout', 'refund')),
    at_ns     bigint NOT NULL,
    memo      text NOT NULL DEFAULT '',
    UNIQUE (reference, kind)
);
ALTER SEQUENCE entries_id_seq OWNED BY entries.id;
CREATE INDEX entries_at_idx ON entries USING brin (at_ns);

CREATE TABLE legs (
    entry_id     bigint NOT NULL,  -- an entry of the same transaction (trigger legs_sealed)
    account      text COLLATE "C" NOT NULL,
    amount_cents bigint NOT NULL
);
CREATE INDEX legs_entry_idx ON legs (entry_id);
CREATE INDEX legs_account_idx ON legs (account, entry_id);

-- Derived: the sum of each account's legs, kept in the same transaction as the legs.
-- `billing reconcile` proves it equals the sum of the legs.
CREATE TABLE balances (
    account       text COLLATE "C" PRIMARY KEY,
    balance_cents bigint NOT NULL
);

CREATE TABLE holds (
    call_id      text COLLATE "C" NOT NULL,
    route_index  int NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('hold', 'capture', 'release')),
    account      text COLLATE "C" NOT NULL,
    amount_cents bigint NOT NULL CHECK (amount_cents >= 0),
    at_ns        bigint NOT NULL,
    PRIMARY KEY (call_id, route_index, kind)
);

CREATE TABLE call_outcomes (
    call_id       text COLLATE "C" PRIMARY KEY,
    publisher     text NOT NULL,
    buyer         text NOT NULL,
    campaign      text NOT NULL,
    status        text NOT NULL,
    billable      boolean NOT NULL,
    price_cents   bigint NOT NULL,
    charged_cents bigint NOT NULL,
    payout_cents  bigint NOT NULL,
    margin_cents  bigint NOT NULL,
    created_ns    bigint NOT NULL,
    final_ns      bigint NOT NULL
);
CREATE INDEX call_outcomes_final_idx ON call_outcomes USING brin (final_ns);

CREATE TABLE audit (
    seq       bigint PRIMARY KEY,
    at_ns     bigint NOT NULL,
    kind      text NOT NULL,
    call_id   text COLLATE "C",
    number    text COLLATE "C",
    body      text NOT NULL,
    prev_hash bytea NOT NULL,
    hash      bytea NOT NULL
);
CREATE INDEX audit_call_idx ON audit (call_id) WHERE call_id IS NOT NULL;
CREATE INDEX audit_number_idx ON audit (number, at_ns) WHERE number IS NOT NULL;
CREATE INDEX audit_at_idx ON audit USING brin (at_ns);

CREATE FUNCTION entries_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    total bigint;
    n int;
BEGIN
    SELECT coalesce(sum(amount_cents), 0), count(*) INTO total, n FROM legs WHERE entry_id = NEW.id;
    IF total <> 0 OR n < 2 THEN
        RAISE EXCEPTION 'unbalanced entry %: % legs sum to % cents', NEW.id, n, total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

-- Checked when the transaction commits, once every leg of the entry is in.
CREATE CONSTRAINT TRIGGER entries_balanced AFTER INSERT ON entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION entries_balanced();

-- A leg must belong to an entry inserted by this same transaction: no leg without its entry,
-- and no leg added later to an entry that was already checked and committed.
CREATE FUNCTION legs_sealed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM (SELECT DISTINCT entry_id FROM new_legs) n LEFT JOIN entries e ON e.id = n.entry_id
               WHERE e.id IS NULL OR e.xmin <> pg_current_xact_id()::xid) THEN
        RAISE EXCEPTION 'legs may be added only to an entry posted in the same transaction'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER legs_sealed AFTER INSERT ON legs
    REFERENCING NEW TABLE AS new_legs FOR EACH STATEMENT EXECUTE FUNCTION legs_sealed();

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER legs_append_only BEFORE UPDATE OR DELETE ON legs
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER holds_append_only BEFORE UPDATE OR DELETE ON holds
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER call_outcomes_append_only BEFORE UPDATE OR DELETE ON call_outcomes
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER legs_no_truncate BEFORE TRUNCATE ON legs
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
