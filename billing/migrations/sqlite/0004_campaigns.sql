-- The standing campaigns (exchange.bookstore): the book as it stood, restored at start.
-- Not money: saved off the hot path by the book store, outside the ledger writer. `spec` is the
-- buyer's campaign message (JSON) as last sent; `bid_cents` and `paused` are the live price and
-- pause, saved more often than the spec. A row is replaced only by a change at least as new.
CREATE TABLE campaigns (
    buyer      TEXT NOT NULL,
    id         TEXT NOT NULL,
    spec       TEXT NOT NULL,
    bid_cents  INTEGER NOT NULL CHECK (bid_cents >= 0),
    paused     INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    PRIMARY KEY (buyer, id)
) WITHOUT ROWID;

-- The nodes of a market seen on this database (exchange.nodes): refreshed by each node's lease
-- renewal, read by a process started without a node id (it must not write beside them).
CREATE TABLE market_nodes (
    market  TEXT NOT NULL,
    node_id TEXT NOT NULL,
    info    TEXT NOT NULL,
    seen_ns INTEGER NOT NULL,
    PRIMARY KEY (market, node_id)
);

-- A node of a market reads an account made at the seller by its key's digest (exchange.service).
CREATE INDEX accounts_key_digest_idx ON accounts (key_digest);
