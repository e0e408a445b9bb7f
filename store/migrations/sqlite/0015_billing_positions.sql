-- Feeds store the writer of their position on PostgreSQL (see its migration
-- of the same number); on SQLite a position is an id and this stays NULL.
ALTER TABLE feed_positions ADD COLUMN writer BIGINT;
