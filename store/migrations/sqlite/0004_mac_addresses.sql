-- MAC addresses of server NICs, handed out uniquely: a MAC is never given
-- to a second holder while the first holds it (the partial unique index,
-- which also stops two racing controllers). Released rows stay as history.
CREATE TABLE mac_addresses (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mac TEXT NOT NULL,
    -- The holding object's uid: unique across time, unlike its name.
    holder TEXT NOT NULL,
    -- namespace/name of the holder, for people reading the history.
    subject TEXT NOT NULL,
    allocated_at BIGINT NOT NULL,
    released_at BIGINT
);
CREATE UNIQUE INDEX mac_addresses_held ON mac_addresses (mac) WHERE released_at IS NULL;
CREATE UNIQUE INDEX mac_addresses_holder ON mac_addresses (holder) WHERE released_at IS NULL;
