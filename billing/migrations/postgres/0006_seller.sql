-- The market's seller in the database (exchange.nodes): the node that holds the seller's lease in
-- Redis also takes this row, raising `epoch` by one. The ledger writer of a node runs each batch in
-- a transaction that first reads this row FOR SHARE with its own epoch: a previous seller (stalled,
-- cut off, or not yet dead) can no longer commit once a new seller has raised the epoch, and the
-- new seller's raise waits for a batch the previous one is committing. A fencing token: the audit
-- chain never forks, whatever the leases in Redis believed.
CREATE TABLE market_seller (
    market   text PRIMARY KEY,
    epoch    bigint NOT NULL CHECK (epoch > 0),
    node_id  text NOT NULL,
    taken_ns bigint NOT NULL
);
