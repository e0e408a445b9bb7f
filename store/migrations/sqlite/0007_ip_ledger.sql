-- The IP ledger (R19-R22): who held which address when, for ever. A
-- holding's address is out of circulation from its allocation until it
-- is returned to the free set (after the quarantine and a clean blacklist
-- check); the partial unique index makes two holders of one address
-- impossible, also between racing controllers. Rows are never deleted.
CREATE TABLE ip_holdings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pool TEXT NOT NULL,
    -- ipv4 | ipv6
    family TEXT NOT NULL,
    -- Number of the address (IPv6: of the server prefix) inside its pool.
    slot BIGINT NOT NULL,
    -- An IPv4 address, or an IPv6 prefix in CIDR notation.
    address TEXT NOT NULL,
    -- 32 for IPv4; the prefix length for IPv6, to find the prefix
    -- holding any address of it.
    prefix_len BIGINT NOT NULL,
    -- The holding server's uid (unique across time, unlike its name).
    holder TEXT NOT NULL,
    account TEXT NOT NULL,
    -- namespace/name of the holder, for people reading the history.
    subject TEXT NOT NULL,
    allocated_at BIGINT NOT NULL,
    released_at BIGINT,
    quarantine_until BIGINT,
    returned_at BIGINT
);
CREATE UNIQUE INDEX ip_holdings_out ON ip_holdings (address) WHERE returned_at IS NULL;
CREATE UNIQUE INDEX ip_holdings_holder ON ip_holdings (holder, family) WHERE released_at IS NULL;
CREATE INDEX ip_holdings_pool ON ip_holdings (pool, family) WHERE returned_at IS NULL;
CREATE INDEX ip_holdings_history ON ip_holdings (address, allocated_at);
CREATE INDEX ip_holdings_quarantine ON ip_holdings (quarantine_until) WHERE released_at IS NOT NULL AND returned_at IS NULL;

-- Addresses a blocking DNS blacklist lists now (one row per address; the
-- checks below keep the history). A listed address that is not held is
-- out of circulation until a check finds it clean.
CREATE TABLE ip_blacklisted (
    address TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    family TEXT NOT NULL,
    slot BIGINT NOT NULL,
    -- The address the blacklists were asked about (IPv6: the NIC's).
    checked TEXT NOT NULL,
    zone TEXT NOT NULL,
    reason TEXT NOT NULL,
    since BIGINT NOT NULL
);
CREATE INDEX ip_blacklisted_pool ON ip_blacklisted (pool, family);

-- Every blacklist answer, appended.
CREATE TABLE dnsbl_checks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    address TEXT NOT NULL,
    zone TEXT NOT NULL,
    -- listed | clean | error
    result TEXT NOT NULL,
    -- The A answer of a listing or an error code (127.255.255.254), or
    -- what went wrong (timeout, SERVFAIL).
    code TEXT,
    reason TEXT,
    checked_at BIGINT NOT NULL
);
CREATE INDEX dnsbl_checks_address ON dnsbl_checks (address, checked_at);

-- An operator's verdict on one address, replacing the blacklists' until
-- withdrawn.
CREATE TABLE ip_overrides (
    address TEXT PRIMARY KEY,
    -- clean | listed
    verdict TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    decided_at BIGINT NOT NULL
);

-- Chargeable events for the provider's billing system, appended; the key
-- makes a retried reconcile record a charge once.
CREATE TABLE billing_charges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    charge_key TEXT NOT NULL UNIQUE,
    account TEXT NOT NULL,
    -- ip_cleanup, ...
    kind TEXT NOT NULL,
    -- In minor units of the currency.
    amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX billing_charges_account ON billing_charges (account, created_at);
