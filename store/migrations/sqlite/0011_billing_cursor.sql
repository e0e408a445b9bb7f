-- SQLite commits one writer at a time, so ids become visible in order and
-- billing events are read by id alone (PostgreSQL needs more, see its
-- migration of the same number).
SELECT 1;
