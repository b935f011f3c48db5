// A drop: STOCK units of one SKU meet a crowd that ramps up to PEAK_RATE
// reservation attempts a second. Shoppers who get a hold confirm most of the
// time and release some. 409 (sold out) and 429 (rate-limited) are expected
// answers; the run fails on a p99 over 150 ms, failed checks, errors, or an
// oversell found at teardown.
//
//   k6 run loadtest/flash-sale.js
//   k6 run -e BASE_URL=http://gw:8080 -e STOCK=5000 -e PEAK_RATE=3000 loadtest/flash-sale.js
import { check } from 'k6';
import exec from 'k6/execution';
import { assertNotOversold, reserve, settle, stock, token } from './lib/flashgate.js';

const STOCK = Number(__ENV.STOCK || 5000);
const PEAK_RATE = Number(__ENV.PEAK_RATE || 2000);
const ACCOUNTS = Number(__ENV.ACCOUNTS || 200000);

export const options = {
  scenarios: {
    drop: {
      executor: 'ramping-arrival-rate',
      startRate: Math.ceil(PEAK_RATE / 20),
      timeUnit: '1s',
      preAllocatedVUs: 200,
      maxVUs: 2000,
      stages: [
        { target: PEAK_RATE, duration: __ENV.RAMP || '20s' },
        { target: PEAK_RATE, duration: __ENV.HOLD || '30s' },
        { target: 0, duration: '10s' },
      ],
    },
  },
  thresholds: {
    'http_req_duration{name:reserve}': ['p(99)<150'],
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
  },
};

export function setup() {
  const sku = `K6-SALE-${Date.now()}`;
  stock(sku, STOCK, { max_per_account: 2 });
  return { sku };
}

export default function (data) {
  const account = `k6-shopper-${Math.floor(Math.random() * ACCOUNTS)}`;
  const bearer = token(account);
  const res = reserve(bearer, data.sku);
  check(res, {
    'reserve answers 201, 409 or 429': (r) => [201, 409, 429].includes(r.status),
    'a refusal is a problem document': (r) =>
      r.status === 201 || (r.headers['Content-Type'] || '').startsWith('application/problem+json'),
  });
  if (res.status !== 201) return;
  const id = res.json('reservation_id');
  const action = exec.scenario.iterationInTest % 5 === 0 ? 'release' : 'confirm';
  check(settle(bearer, id, action), { [`${action} answers 200`]: (r) => r.status === 200 });
}

export function teardown(data) {
  assertNotOversold(data.sku, STOCK);
}
