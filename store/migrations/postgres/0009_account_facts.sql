-- What the provider's billing system and operators reported about an
-- account (invoices, reminders, payments, abuse, legal and KYC holds,
-- maintenance, terminations, restores). Append-only: never updated, never
-- deleted; an account's standing is computed from its facts
-- (stratus_core::standing).
CREATE TABLE account_facts (
    seq BIGSERIAL PRIMARY KEY,
    -- The reporter's id, unique per provider: a retried report is
    -- recognised by it and answered as the first time.
    fact_id TEXT NOT NULL UNIQUE,
    account TEXT NOT NULL,
    -- invoice_overdue, reminder_sent, abuse_report, ...
    kind TEXT NOT NULL,
    -- The fact as stratus reads it (JSON).
    fact TEXT NOT NULL,
    -- The report as received, with its evidence (JSON).
    body TEXT NOT NULL,
    -- Who reported it: the token's id and role.
    actor TEXT NOT NULL,
    recorded_at BIGINT NOT NULL
);
CREATE INDEX account_facts_account ON account_facts (account, seq);

-- When each account's standing next changes by itself (a suspension, a
-- termination, a notice). The controller acts on every due row, after a
-- restart too: no deadline lives only in memory.
CREATE TABLE account_deadlines (
    account TEXT PRIMARY KEY,
    due_at BIGINT NOT NULL
);
CREATE INDEX account_deadlines_due ON account_deadlines (due_at);
