#!/usr/bin/env bash
# What a hold costs Redis at its floor, whatever the gateway: a redis-server of
# its own, 100,000 holds of one hot SKU sent through `redis-cli --pipe`, and
# redis-server's CPU (from /proc) and EVALSHA time (INFO commandstats) per hold.
#   single   the side-by-side probe's one-hold script (../shared/bench/probe), one hold per call
#   batched  that same hold applied 32 times per call
#   slim     the least a flashgate hold writes: per hold HINCRBY of the account, SET of a
#            packed record, XADD of one packed event; per call HMGET, ZADD, HSET, SPUBLISH
#   folded   slim with the records in one HSET and the events in one XADD per call
# usage: benches/floor/floor.sh [batch=32]        (needs redis-server, redis-cli, python3)
set -eu
here=$(cd "$(dirname "$0")" && pwd); batch=${1:-32}
probe=${PROBE_SCRIPT:-$here/../../../shared/bench/probe/reserve.lua}
port=${FLOOR_REDIS_PORT:-6397}; w=$(mktemp -d /tmp/flashgate-floor.XXXX)
trap 'redis-cli -p $port shutdown nosave >/dev/null 2>&1; rm -rf "$w"' EXIT
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
run() { # variant script calls batch
  redis-cli -p $port shutdown nosave >/dev/null 2>&1 || true
  sleep 0.3
  redis-server --port $port --save '' --appendonly no --daemonize yes --pidfile $w/r.pid \
    --logfile $w/r.log --dir $w
  for _ in $(seq 50); do redis-cli -p $port ping >/dev/null 2>&1 && break; sleep 0.1; done
  local pid sha c0 c1 holds us
  pid=$(cat $w/r.pid)
  redis-cli -p $port hset 'inv:{hot}' stock 1000000000000 reserved 0 oh 1000000000000 rs 0 ver 0 >/dev/null
  sha=$(redis-cli -p $port script load "$(cat "$2")")
  python3 "$here/gen.py" "$1" "$3" "$4" "$sha" > $w/cmds.resp
  redis-cli -p $port config resetstat >/dev/null
  c0=$(cpu $pid)
  redis-cli -p $port --pipe < $w/cmds.resp > /dev/null
  c1=$(cpu $pid)
  case $1 in single|batched) holds=$(redis-cli -p $port hget 'inv:{hot}' reserved) ;;
    *) holds=$(redis-cli -p $port hget 'inv:{hot}' rs) ;; esac
  us=$(redis-cli -p $port info commandstats | sed -n 's/^cmdstat_evalsha:calls=[0-9]*,usec=\([0-9]*\),.*/\1/p')
  awk -v n="$1" -v b="$4" -v h="$holds" -v u="$us" -v a="$c0" -v z="$c1" -v t="$(getconf CLK_TCK)" 'BEGIN{
    printf "%-8s batch %-3d holds %-7d redis-server %5.2f us/hold  EVALSHA %5.2f us/hold\n",
      n, b, h, (z-a)/t*1e6/h, u/h}'
}
if [ -f "$probe" ]; then
  run single "$probe" 100000 1
  run batched "$here/probe_hold_batched.lua" $((100000 / batch)) "$batch"
fi
run slim "$here/slim.lua" $((100000 / batch)) "$batch"
run folded "$here/folded.lua" $((100000 / batch)) "$batch"
