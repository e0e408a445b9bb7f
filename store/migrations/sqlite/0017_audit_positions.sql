-- The audit log is read by position on PostgreSQL (see its migration of the
-- same number); on SQLite the id is the position.
SELECT 1;
