// A long, steady load: holds are placed, confirmed, released or left to
// expire, for DURATION (default 30 minutes). It looks for what only time
// shows: latency creep, a journal that falls behind, memory that grows
// (watch the process while it runs), and expiry that cannot keep up.
//
//   k6 run loadtest/soak.js
//   k6 run -e DURATION=2h -e RATE=300 loadtest/soak.js
import { check } from 'k6';
import http from 'k6/http';
import { Rate } from 'k6/metrics';
import { BASE_URL, assertNotOversold, reserve, settle, stock, token } from './lib/flashgate.js';

const SKUS = Number(__ENV.SKUS || 50);
const STOCK = Number(__ENV.STOCK || 1000000);
// Share of readiness probes that found the journal less than 5 s behind.
const journalKeepsUp = new Rate('journal_keeps_up');

export const options = {
  scenarios: {
    steady: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 200),
      timeUnit: '1s',
      duration: __ENV.DURATION || '30m',
      preAllocatedVUs: 50,
      maxVUs: 500,
    },
  },
  thresholds: {
    'http_req_duration{name:reserve}': ['p(99)<150'],
    journal_keeps_up: ['rate>0.99'],
    http_req_failed: ['rate<0.001'],
    checks: ['rate>0.99'],
  },
};

export function setup() {
  const run = Date.now();
  const skus = [];
  for (let i = 0; i < SKUS; i++) {
    const sku = `K6-SOAK-${run}-${i}`;
    // Short holds, so the expiry sweeper has work all along.
    stock(sku, STOCK, { reservation_ttl_seconds: 30 });
    skus.push(sku);
  }
  return { skus };
}

export default function (data) {
  const sku = data.skus[Math.floor(Math.random() * data.skus.length)];
  const bearer = token(`k6-soak-${Math.floor(Math.random() * 100000)}`);
  const res = reserve(bearer, sku);
  check(res, { 'reserve answers 201 or 429': (r) => r.status === 201 || r.status === 429 });
  if (res.status === 201) {
    const roll = Math.random();
    // 60 % confirmed, 20 % released, 20 % left to expire.
    if (roll < 0.8) {
      const action = roll < 0.6 ? 'confirm' : 'release';
      check(settle(bearer, res.json('reservation_id'), action), {
        [`${action} answers 200`]: (r) => r.status === 200,
      });
    }
  }
  if (Math.random() < 0.01) {
    const ready = http.get(`${BASE_URL}/readyz`, { tags: { name: 'readyz' } });
    journalKeepsUp.add(ready.status === 200 && ready.json('journal_lag_seconds') < 5);
  }
}

export function teardown(data) {
  for (const sku of data.skus) assertNotOversold(sku, STOCK);
}
