-- Stock notifications (webhooks). A SKU's top-level status is tracked here,
-- in the same transaction that journals its events, so each change of
-- status becomes exactly one notification however many instances and
-- retries write the journal; deliveries are at least once, per webhook.

-- The location settings each event left, so a status can be computed from
-- any event read back (NULL in rows journaled before this migration).
ALTER TABLE inventory_events ADD COLUMN safety_stock_after bigint;
ALTER TABLE inventory_events ADD COLUMN low_stock_threshold_after bigint;
ALTER TABLE inventory_events ADD COLUMN backorder_limit_after bigint;

-- Each SKU's status after `version`: every journaled event up to it was
-- considered, in version order, with no version missing (versions grow by
-- one per event). `locations` holds each location's counts at `version`.
-- Locked (FOR UPDATE) by every journal write of the SKU. `gap_since`: when
-- events past a missing version were first waiting for it.
CREATE TABLE sku_status (
    sku        text PRIMARY KEY,
    status     text        CHECK (status IN ('IN_STOCK', 'LOW_STOCK', 'OUT_OF_STOCK', 'BACKORDER')),
    version    bigint      NOT NULL,
    locations  jsonb       NOT NULL,
    gap_since  timestamptz,
    updated_at timestamptz NOT NULL
);
CREATE INDEX sku_status_gaps ON sku_status (gap_since) WHERE gap_since IS NOT NULL;

-- SKUs journaled before this migration start from their current counts,
-- with no status to leave (their first change here is no transition).
INSERT INTO sku_status (sku, status, version, locations, updated_at)
SELECT sku, NULL, max(version),
    jsonb_object_agg(location, jsonb_build_array(on_hand, reserved, safety_stock,
        low_stock_threshold, backorder_limit)),
    now()
FROM stock_levels GROUP BY sku;

-- One row per status change: the outbox the deliverer reads.
CREATE TABLE stock_notifications (
    -- `<sku>:<version>`: a replayed write finds its notification already there.
    id              text PRIMARY KEY,
    type            text        NOT NULL CHECK (type IN
                    ('stock.low', 'stock.out', 'stock.back_in', 'stock.backorder')),
    sku             text        NOT NULL,
    previous_status text        NOT NULL,
    status          text        NOT NULL,
    version         bigint      NOT NULL,
    -- The inventory view at that version, as webhooks carry it.
    view            jsonb       NOT NULL,
    occurred_at     timestamptz NOT NULL
);
CREATE INDEX stock_notifications_sku ON stock_notifications (sku, version);

-- Registered receivers.
CREATE TABLE webhooks (
    id         text PRIMARY KEY,
    -- Listing order and cursor.
    seq        bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    url        text        NOT NULL,
    events     text[]      NOT NULL,
    -- NULL: every SKU.
    skus       text[],
    secret     text        NOT NULL,
    created_at timestamptz NOT NULL,
    deleted_at timestamptz
);

-- One delivery of one notification to one webhook.
CREATE TABLE webhook_deliveries (
    id              text PRIMARY KEY,
    -- Listing order and cursor.
    seq             bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    webhook_id      text        NOT NULL REFERENCES webhooks (id),
    notification_id text        NOT NULL REFERENCES stock_notifications (id),
    status          text        NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        int         NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_attempt_at timestamptz,
    -- The receiver's HTTP status, or NULL when it could not be reached.
    last_status     int,
    last_error      text,
    created_at      timestamptz NOT NULL,
    delivered_at    timestamptz,
    UNIQUE (webhook_id, notification_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id, seq);
