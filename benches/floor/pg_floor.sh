#!/usr/bin/env bash
# What journaling a hold costs Postgres at its floor: flashgate's own schema
# (src/journal/migrations) in a database of its own, 100 transactions of 1,000
# 'reserved' rows in inventory_events and 1,000 rows in reservations, the rows
# generated inside Postgres (no client, no parameters to decode), and the
# backend's CPU (from /proc) per reservation.
# usage: benches/floor/pg_floor.sh      (PG_ADMIN_URL, default postgres://postgres@127.0.0.1:5432)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
pg=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432}; db=flashgate_pg_floor
export PGOPTIONS="-c client_min_messages=warning"
w=$(mktemp -d /tmp/flashgate-pg-floor.XXXX)
cleanup() { exec 3>&- 2>/dev/null || true; psql "$pg/postgres" -qc "drop database if exists $db" >/dev/null; rm -rf "$w"; }
trap cleanup EXIT
psql "$pg/postgres" -qc "drop database if exists $db" -c "create database $db" >/dev/null
cat "$here"/../../src/journal/migrations/V*.sql | psql "$pg/$db" -q >/dev/null
mkfifo $w/in
psql "$pg/$db" -qAt < $w/in > $w/out &
exec 3>$w/in
echo "select pg_backend_pid();" >&3
for _ in $(seq 50); do [ -s $w/out ] && break; sleep 0.1; done
pid=$(head -1 $w/out)
b0=$(awk '{print $14+$15}' /proc/$pid/stat)
for b in $(seq 0 99); do cat >&3 <<SQL
begin;
insert into inventory_events (partition, stream_id, kind, sku, location, reservation_id,
    account_id, qty, on_hand_after, reserved_after, version, occurred_at)
  select 7, (1764680000000 + i) || '-0', 'reserved', 'HOT-1', 'default', 'r07' || md5(i::text),
    'acct' || (i % 10000), 1, 1000000000, i, i, now()
  from generate_series($b * 1000, $b * 1000 + 999) i on conflict do nothing;
insert into reservations (reservation_id, sku, location, account_id, qty, state, backorder,
    created_at, expires_at, updated_at, version, stream_id)
  select 'r07' || md5(i::text), 'HOT-1', 'default', 'acct' || (i % 10000), 1, 'held', false,
    now(), now(), now(), i, (1764680000000 + i) || '-0'
  from generate_series($b * 1000, $b * 1000 + 999) i on conflict (reservation_id) do nothing;
commit;
SQL
done
echo "select 'done';" >&3
while ! grep -q '^done$' $w/out; do sleep 0.1; done
b1=$(awk '{print $14+$15}' /proc/$pid/stat)
exec 3>&-; wait
awk -v a=$b0 -v b=$b1 -v t="$(getconf CLK_TCK)" 'BEGIN{
  printf "postgres backend %.1f us per reservation (one inventory_events row, one reservations row)\n", (b-a)/t*1e6/100000}'
