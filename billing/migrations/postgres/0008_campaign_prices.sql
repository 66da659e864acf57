-- Live prices and pauses in a table of their own (exchange.bookstore). A price-only change used to
-- write a new version of its campaign's whole row, the buyer's message included. `campaigns` keeps
-- the price and pause saved with the message; a row here is a later change (the newer of the two
-- is the live one), kept only for a campaign whose message is stored and not newer.
CREATE TABLE campaign_prices (
    buyer      text NOT NULL,
    id         text NOT NULL,
    bid_cents  bigint NOT NULL CHECK (bid_cents >= 0),
    paused     boolean NOT NULL,
    updated_ns bigint NOT NULL,
    PRIMARY KEY (buyer, id)
);
