-- Listings of reservations, newest first, page by page. `seq` is given when
-- the journal first writes a reservation's row and never changes, so a
-- cursor over it neither repeats nor skips a row whatever is journaled
-- between two pages. Rows already there get theirs in table order.
ALTER TABLE reservations ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY;

-- A shopper's own reservations; an operator's by SKU (which also serves the
-- rebuild's per-SKU reads, so the (sku, state) index goes) or all of them;
-- SKUs by status for the low-stock report.
CREATE INDEX reservations_account_seq ON reservations (account_id, seq);
CREATE INDEX reservations_sku_seq ON reservations (sku, seq);
CREATE UNIQUE INDEX reservations_seq ON reservations (seq);
DROP INDEX reservations_sku_state;
CREATE INDEX sku_status_status ON sku_status (status, sku);
