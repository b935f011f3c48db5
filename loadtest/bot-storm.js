// Bots against shoppers: a few accounts fire BOT_RATE reservations a second
// between them while a steady crowd of distinct shoppers buys. The bots must
// be held to their per-account limit (429 with Retry-After, answered fast)
// and the shoppers must not notice them.
//
//   k6 run loadtest/bot-storm.js
//   k6 run -e BOTS=5 -e BOT_RATE=2000 -e SHOPPER_RATE=200 loadtest/bot-storm.js
import { check } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import { assertNotOversold, reserve, stock, token } from './lib/flashgate.js';

const BOTS = Number(__ENV.BOTS || 5);
const STOCK = Number(__ENV.STOCK || 100000);
const DURATION = __ENV.DURATION || '30s';
const botHolds = new Counter('bot_holds');
// How long a refused bot waited: only 429s, since a bot's 201 is a real
// reservation and costs what any reservation costs.
const botRefusals = new Trend('bot_refusal_duration', true);

export const options = {
  scenarios: {
    bots: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.BOT_RATE || 2000),
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: 100,
      maxVUs: 500,
      exec: 'bot',
    },
    shoppers: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.SHOPPER_RATE || 200),
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: 50,
      maxVUs: 500,
      exec: 'shopper',
    },
  },
  thresholds: {
    // Refusing a bot costs next to nothing.
    bot_refusal_duration: ['p(99)<50'],
    'http_req_duration{scenario:shoppers}': ['p(99)<150'],
    // Every shopper is served: the bots' limits are theirs alone.
    'checks{scenario:shoppers}': ['rate>0.99'],
    'checks{scenario:bots}': ['rate>0.99'],
    http_req_failed: ['rate<0.01'],
  },
};

export function setup() {
  const sku = `K6-BOTS-${Date.now()}`;
  stock(sku, STOCK);
  return { sku };
}

export function bot(data) {
  const res = reserve(token(`k6-bot-${Math.floor(Math.random() * BOTS)}`), data.sku);
  if (res.status === 201) botHolds.add(1);
  if (res.status === 429) botRefusals.add(res.timings.duration);
  check(res, {
    'a bot is held to its limit or served': (r) => r.status === 201 || r.status === 429,
    'a 429 says when to retry': (r) => r.status !== 429 || Number(r.headers['Retry-After']) >= 1,
  });
}

export function shopper(data) {
  const res = reserve(token(`k6-shopper-${__VU}-${__ITER}`), data.sku);
  check(res, { 'a shopper is served': (r) => r.status === 201 });
}

export function teardown(data) {
  assertNotOversold(data.sku, STOCK);
}
