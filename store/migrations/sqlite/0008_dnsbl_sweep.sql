-- R20's sweep: when the blacklists are next asked about a held address,
-- and how many checks of it in a row were inconclusive (the retry backs
-- off). NULL: due now (holdings made before the sweep existed).
ALTER TABLE ip_holdings ADD COLUMN next_check_at BIGINT;
ALTER TABLE ip_holdings ADD COLUMN inconclusive_checks BIGINT NOT NULL DEFAULT 0;
CREATE INDEX ip_holdings_sweep ON ip_holdings (pool, next_check_at) WHERE released_at IS NULL;

-- Checks operators asked for (POST /v1/admin/ips/{address}/check): the
-- API records the request, the controller answers it in its next round of
-- the address's pool and records the verdict here.
CREATE TABLE dnsbl_check_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The ledger's name of the address (IPv6: the server prefix).
    address TEXT NOT NULL,
    -- The address the blacklists are asked about.
    checked TEXT NOT NULL,
    pool TEXT NOT NULL,
    family TEXT NOT NULL,
    slot BIGINT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    answered_at BIGINT,
    -- clean | listed | inconclusive
    verdict TEXT
);
CREATE INDEX dnsbl_check_requests_pending ON dnsbl_check_requests (pool, id) WHERE answered_at IS NULL;
CREATE INDEX dnsbl_check_requests_address ON dnsbl_check_requests (address, id);
