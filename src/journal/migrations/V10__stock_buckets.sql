-- A SKU's stock buckets: the partitions of its buckets, comma separated
-- (each a SKU of its own here, named `<sku>~<partition>`), kept with its
-- policy so that `flashgate rebuild` restores the layout. NULL: none.
ALTER TABLE sku_policies ADD COLUMN buckets text;
