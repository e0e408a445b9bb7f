-- A fact reported while the deadline runner settles the same account must
-- not be overwritten by the deadline that settle computed without it (see
-- the PostgreSQL migration of the same number). SQLite cannot drop a NOT
-- NULL constraint in place: the table is rebuilt.
CREATE TABLE account_deadlines_next (
    account TEXT PRIMARY KEY,
    due_at BIGINT,
    revision BIGINT NOT NULL DEFAULT 0
);
INSERT INTO account_deadlines_next (account, due_at) SELECT account, due_at FROM account_deadlines;
DROP TABLE account_deadlines;
ALTER TABLE account_deadlines_next RENAME TO account_deadlines;
CREATE INDEX account_deadlines_due ON account_deadlines (due_at);
