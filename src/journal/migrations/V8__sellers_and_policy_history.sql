-- A SKU's owner in a marketplace: tokens with `inventory:seller` and this
-- `seller` claim reach the admin endpoints of its SKUs only.
ALTER TABLE sku_policies ADD COLUMN seller text;
CREATE INDEX sku_policies_seller ON sku_policies (seller, sku) WHERE seller IS NOT NULL;

-- Every policy change, with who made it and through which request, for a
-- SKU's history. A policy change keeps the SKU's version: `version` is the
-- version it was made at, and `id` orders changes at one version.
CREATE TABLE policy_changes (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku        text        NOT NULL,
    version    bigint      NOT NULL,
    actor      text        NOT NULL,
    request_id text,
    -- The policy after the change, as `PUT /v1/admin/inventory/{sku}` answers it.
    policy     jsonb       NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX policy_changes_sku ON policy_changes (sku, version, id);
