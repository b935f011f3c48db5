-- The journal: what downstream order systems read (see API.md). Columns
-- beyond the contract are flashgate's own bookkeeping, documented inline.

-- One row per deployment: the partition count the data was laid out with.
CREATE TABLE flashgate_meta (
    id         boolean PRIMARY KEY DEFAULT true CHECK (id),
    partitions int NOT NULL CHECK (partitions > 0)
);

-- One row per partition stream entry; replaying an entry changes nothing.
CREATE TABLE inventory_events (
    partition      int         NOT NULL,
    stream_id      text        NOT NULL,
    kind           text        NOT NULL CHECK (kind IN
                   ('reserved', 'confirmed', 'released', 'expired', 'stock_set', 'adjusted')),
    sku            text        NOT NULL,
    location       text        NOT NULL,
    reservation_id text,
    account_id     text,
    -- Reservation events: the reservation's units. stock_set and adjusted:
    -- the signed change of on_hand.
    qty            int         NOT NULL,
    on_hand_after  bigint      NOT NULL,
    reserved_after bigint      NOT NULL,
    version        bigint      NOT NULL,
    occurred_at    timestamptz NOT NULL,
    -- adjusted only: why and the caller's reference.
    reason         text,
    reference      text,
    PRIMARY KEY (partition, stream_id)
);
CREATE INDEX inventory_events_sku_version ON inventory_events (sku, version);
CREATE INDEX inventory_events_reservation ON inventory_events (reservation_id)
    WHERE reservation_id IS NOT NULL;

-- The current state of each reservation, from its newest event.
CREATE TABLE reservations (
    reservation_id text PRIMARY KEY,
    sku            text        NOT NULL,
    location       text        NOT NULL,
    account_id     text        NOT NULL,
    qty            int         NOT NULL,
    state          text        NOT NULL CHECK (state IN ('held', 'confirmed', 'released', 'expired')),
    backorder      bool        NOT NULL,
    -- Null only until the reservation's first event arrives, when a later
    -- event (an expiry) was journaled first.
    created_at     timestamptz,
    expires_at     timestamptz,
    updated_at     timestamptz NOT NULL,
    -- The SKU version and stream entry of the newest event applied: an older
    -- event never overwrites a newer state.
    version        bigint      NOT NULL,
    stream_id      text        NOT NULL
);
CREATE INDEX reservations_sku_state ON reservations (sku, state);

-- Current counts per SKU and location, from the newest event.
CREATE TABLE stock_levels (
    sku                 text        NOT NULL,
    location            text        NOT NULL,
    on_hand             bigint      NOT NULL,
    reserved            bigint      NOT NULL,
    version             bigint      NOT NULL,
    updated_at          timestamptz NOT NULL,
    -- The rest of the location's settings and the SKU's partition, so that
    -- `flashgate rebuild` can restore Redis from here.
    safety_stock        bigint      NOT NULL DEFAULT 0,
    low_stock_threshold bigint      NOT NULL DEFAULT 0,
    backorder_limit     bigint      NOT NULL DEFAULT 0,
    partition           int         NOT NULL,
    PRIMARY KEY (sku, location)
);
CREATE INDEX stock_levels_partition ON stock_levels (partition);

-- Per partition: the stream entry up to which everything is in Postgres.
CREATE TABLE journal_checkpoints (
    partition  int PRIMARY KEY,
    stream_id  text        NOT NULL,
    updated_at timestamptz NOT NULL
);

-- Sale policy per SKU, written before the admin's request is acknowledged,
-- so `flashgate rebuild` restores caps and sale windows too.
CREATE TABLE sku_policies (
    sku              text PRIMARY KEY,
    max_per_account  bigint,
    opens_at         timestamptz,
    closes_at        timestamptz,
    hold_ttl_seconds bigint,
    updated_at       timestamptz NOT NULL
);
