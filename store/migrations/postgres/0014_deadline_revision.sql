-- A fact reported while the deadline runner settles the same account must
-- not be overwritten by the deadline that settle computed without it. Every
-- new fact bumps the account's revision in the transaction that records it;
-- the runner reads the revision before the facts and writes its deadline
-- only if the revision is still the one it read. Rows are never deleted (a
-- NULL deadline means nothing is pending), so a revision never goes back.
ALTER TABLE account_deadlines ADD COLUMN revision BIGINT NOT NULL DEFAULT 0;
ALTER TABLE account_deadlines ALTER COLUMN due_at DROP NOT NULL;
