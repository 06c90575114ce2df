-- A customer whose only credited order lost its credit (a fraud verdict, or a restatement
-- to nobody) is a node no more: its latest row has active = 0. Read with FINAL and
-- WHERE active = 1.
ALTER TABLE ripple.chain_nodes ADD COLUMN IF NOT EXISTS active UInt8 DEFAULT 1 AFTER ts;
