"""Writes EVALSHA commands as RESP on stdout for floor.sh.

usage: gen.py single|batched|slim|folded CALLS BATCH SHA
  single   the probe's one-hold script, one reservation per call
  batched  the probe's hold applied BATCH times per call
  slim     slim.lua / folded.lua: BATCH (reservation id, account) pairs per call
"""
import sys

mode, calls, batch, sha = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]


def resp(*args):
    out = ['*%d\r\n' % len(args)]
    for a in args:
        a = str(a)
        out.append('$%d\r\n%s\r\n' % (len(a.encode()), a))
    return ''.join(out)


w = sys.stdout.write
n = 0
for _ in range(calls):
    if mode == 'single':
        n += 1
        rid = 'r%d' % n
        w(resp('EVALSHA', sha, 3, 'inv:{hot}', 'res:{hot}:' + rid, 'ev:{hot}',
               1, rid, 600000, 'u%d' % (n % 10000), 100000))
        continue
    rids = []
    for _ in range(batch):
        n += 1
        rids.append('r%d' % n)
    if mode == 'batched':
        w(resp('EVALSHA', sha, 2, 'inv:{hot}', 'ev:{hot}', 1, 600000, 100000, *rids))
    else:
        args = []
        for rid in rids:
            args += [rid, 'acct%d' % (int(rid[1:]) * 7919 % 10000)]
        w(resp('EVALSHA', sha, 4, 'inv:{hot}', 'holds:{hot}', 'acct:{hot}', 'ev:{hot}',
               1000000, *args))
