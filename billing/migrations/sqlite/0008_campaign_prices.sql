-- Live prices and pauses in a table of their own (exchange.bookstore). A price-only change used to
-- rewrite its campaign's whole row, the buyer's message included: at 100,000 bids/s over 100,000
-- campaigns a round rewrote most of the table (~60 MB of WAL a second). `campaigns` keeps the
-- price and pause saved with the message; a row here is a later change (the newer of the two is
-- the live one), kept only for a campaign whose message is stored and not newer.
CREATE TABLE campaign_prices (
    buyer      TEXT NOT NULL,
    id         TEXT NOT NULL,
    bid_cents  INTEGER NOT NULL CHECK (bid_cents >= 0),
    paused     INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    PRIMARY KEY (buyer, id)
) WITHOUT ROWID;
