-- Who made each operator's stock change (the token's `sub`) and through
-- which request (its X-Request-Id); NULL for other events, and for changes
-- journaled before this migration.
ALTER TABLE inventory_events ADD COLUMN actor text;
ALTER TABLE inventory_events ADD COLUMN request_id text;
-- A SKU's change history, newest first.
CREATE INDEX inventory_events_sku_changes ON inventory_events (sku, version)
    WHERE kind IN ('stock_set', 'adjusted');
