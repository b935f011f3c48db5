-- A live hold can change: `extended` moves its deadline (the reservation's
-- expires_at follows the newest event), and a partial release (shrink)
-- journals `released` with the units given back while the reservation stays
-- `held` with the rest (reservations.qty follows the newest event).
ALTER TABLE inventory_events DROP CONSTRAINT inventory_events_kind_check;
ALTER TABLE inventory_events ADD CONSTRAINT inventory_events_kind_check CHECK (kind IN
    ('reserved', 'confirmed', 'released', 'expired', 'stock_set', 'adjusted', 'extended'));

-- The cart a reservation is a line of (POST /v1/carts); NULL for a single
-- reservation.
ALTER TABLE reservations ADD COLUMN cart_id text;
CREATE INDEX reservations_cart ON reservations (cart_id) WHERE cart_id IS NOT NULL;
