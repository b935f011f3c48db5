-- A SKU's waiting room (admissions per second, admission TTL in seconds),
-- kept with its policy so that `flashgate rebuild` restores it. NULL: off.
ALTER TABLE sku_policies ADD COLUMN admit_per_second bigint;
ALTER TABLE sku_policies ADD COLUMN admission_ttl_seconds bigint;
