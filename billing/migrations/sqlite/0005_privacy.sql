-- Consumer numbers at rest (billing.vault): one data key per number, wrapped by the master
-- key; deleting a number's rows here (crypto-shredding) makes every sealed copy of it
-- unreadable. Unlike the money and audit tables, these rows can be deleted and updated
-- (erasure, retention, master key rotation): no append-only triggers.
CREATE TABLE privacy_keys (
    kid        TEXT PRIMARY KEY,            -- 16 hex digits, named in every value it sealed
    blind      TEXT NOT NULL,               -- the number's blind index (HMAC), never the number
    master_kid TEXT NOT NULL,               -- the master key that wraps it
    wrapped    TEXT NOT NULL,               -- base64(nonce || AES-GCM(master, data key))
    created_ns INTEGER NOT NULL
);
CREATE INDEX privacy_keys_blind_idx ON privacy_keys (blind);
CREATE INDEX privacy_keys_created_idx ON privacy_keys (created_ns);
CREATE INDEX privacy_keys_master_idx ON privacy_keys (master_kid);

-- The index (HMAC) key, wrapped by the master key like the data keys.
CREATE TABLE privacy_meta (
    name       TEXT PRIMARY KEY,
    master_kid TEXT NOT NULL,
    wrapped    TEXT NOT NULL,
    updated_ns INTEGER NOT NULL
);

-- Legal holds: numbers (by blind index) whose data retention must not shred and erasure must not destroy.
CREATE TABLE privacy_holds (
    blind      TEXT PRIMARY KEY,
    reason     TEXT NOT NULL DEFAULT '',
    created_ns INTEGER NOT NULL
);
