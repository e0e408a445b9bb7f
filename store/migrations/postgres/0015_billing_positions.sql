-- Billing events are read in the order (writer_xid, id): a position that is
-- final once visible (ids alone are not, see 0011). Feeds store the writer
-- of their position too; NULL for a position stored as an id before.
CREATE INDEX billing_charges_by_position ON billing_charges (writer_xid, id);
ALTER TABLE feed_positions ADD COLUMN writer BIGINT;
