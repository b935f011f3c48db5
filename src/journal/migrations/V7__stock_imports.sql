-- Bulk stock imports made with an Idempotency-Key: the same key and body
-- again answer `result` and change nothing; another body is refused.
-- `digest` is SHA-256 of the body, hex.
CREATE TABLE stock_imports (
    account_id      text        NOT NULL,
    idempotency_key text        NOT NULL,
    digest          text        NOT NULL,
    result          jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, idempotency_key)
);
