-- The change feed (GET /v1/admin/events) reads inventory_events in journal
-- order: by the transaction that wrote each row, then by the row's place in
-- it. A reader only reads rows of transactions older than every transaction
-- still running (pg_snapshot_xmin), so a row can never appear behind a
-- cursor that was already handed out.
ALTER TABLE inventory_events ADD COLUMN journal_seq bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE inventory_events ADD COLUMN journal_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX inventory_events_feed ON inventory_events (journal_xid, journal_seq);
CREATE INDEX inventory_events_sku_feed ON inventory_events (sku, journal_xid, journal_seq);
