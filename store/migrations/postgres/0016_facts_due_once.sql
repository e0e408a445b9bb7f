-- Before 0014 a fact could be kept without its account being made due (a
-- crash between the two writes, or a settle overwriting its deadline), and
-- reporting it again answers "repeated" without making it due: every
-- account with facts is settled once more after the upgrade.
INSERT INTO account_deadlines (account, due_at, revision)
SELECT DISTINCT account, 0, 0 FROM account_facts
ON CONFLICT (account) DO UPDATE SET due_at = 0;
