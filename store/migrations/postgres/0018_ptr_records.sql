-- Reverse DNS (R20-R22): the PTR set for an address a server holds, and
-- every change of one, for ever (who said this address was which name,
-- when). A record lives only while its holding does: releasing the
-- holding removes it, in the same transaction.
CREATE TABLE ip_ptr_records (
    -- The address (an IPv4 address, or one address of an IPv6 prefix).
    address TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    -- The ip_holdings row the address belongs to.
    holding_id BIGINT NOT NULL,
    holder TEXT NOT NULL,
    account TEXT NOT NULL,
    changed_at BIGINT NOT NULL
);
CREATE INDEX ip_ptr_records_holder ON ip_ptr_records (holder);

CREATE TABLE ip_ptr_changes (
    id BIGSERIAL PRIMARY KEY,
    address TEXT NOT NULL,
    -- NULL: the PTR was removed (the default answers again).
    hostname TEXT,
    holder TEXT NOT NULL,
    account TEXT NOT NULL,
    -- namespace/name of the holder, for people reading the history.
    subject TEXT NOT NULL,
    -- Who changed it: token:<id>, controller, or an operator's command.
    actor TEXT NOT NULL,
    changed_at BIGINT NOT NULL
);
CREATE INDEX ip_ptr_changes_by_address ON ip_ptr_changes (address, id);

-- Bumped by every transaction that changes a PTR, under its row lock: its
-- value moves in commit order (an id of ip_ptr_changes does not on
-- PostgreSQL), so a server that saw it move never misses a change.
CREATE TABLE ip_ptr_version (
    id INTEGER PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO ip_ptr_version (id, version) VALUES (1, 0);
