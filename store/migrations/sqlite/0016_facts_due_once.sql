-- Every account with facts is settled once more after the upgrade (see the
-- PostgreSQL migration of the same number).
INSERT INTO account_deadlines (account, due_at, revision)
SELECT DISTINCT account, 0, 0 FROM account_facts WHERE true
ON CONFLICT (account) DO UPDATE SET due_at = 0;
