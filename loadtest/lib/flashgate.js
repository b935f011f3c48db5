// Shared helpers of the k6 scripts: configuration from the environment,
// HS256 tokens signed like `flashgate token`, and the calls the scripts make.
//
//   BASE_URL     the gateway (default http://127.0.0.1:8080)
//   AUTH_SECRET  the gateway's auth.secret (default: its development secret)
import http from 'k6/http';
import crypto from 'k6/crypto';
import encoding from 'k6/encoding';

export const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const SECRET = __ENV.AUTH_SECRET || 'flashgate-development-secret-do-not-use-in-production';

// 409 and 429 are answers a flash sale expects, not failures: k6's
// http_req_failed counts only what is left (5xx, 4xx bugs, timeouts).
http.setResponseCallback(http.expectedStatuses(200, 201, 409, 429));

const HEADER = encoding.b64encode(JSON.stringify({ alg: 'HS256', typ: 'JWT' }), 'rawurl');

/** A token for `account` (1-64 of [A-Za-z0-9._:@-]), valid for `ttlSeconds`. */
export function token(account, { admin = false, ttlSeconds = 3600 } = {}) {
  const claims = { sub: account, exp: Math.floor(Date.now() / 1000) + ttlSeconds };
  if (admin) claims.scope = 'inventory:admin';
  const unsigned = `${HEADER}.${encoding.b64encode(JSON.stringify(claims), 'rawurl')}`;
  return `${unsigned}.${crypto.hmac('sha256', SECRET, unsigned, 'base64rawurl')}`;
}

function params(bearer, name, extra = {}) {
  return {
    headers: { Authorization: `Bearer ${bearer}`, 'Content-Type': 'application/json', ...extra },
    tags: { name },
  };
}

/** Sets a location's stock (admin); throws unless the gateway took it. */
export function stock(sku, onHand, policy = null) {
  const admin = token('k6-admin', { admin: true });
  const url = `${BASE_URL}/v1/admin/inventory/${sku}`;
  const set = http.put(`${url}/locations/default`, JSON.stringify({ on_hand: onHand }),
    params(admin, 'admin'));
  if (set.status !== 200) throw new Error(`stocking ${sku}: ${set.status} ${set.body}`);
  if (policy) {
    const p = http.put(url, JSON.stringify(policy), params(admin, 'admin'));
    if (p.status !== 200) throw new Error(`policy of ${sku}: ${p.status} ${p.body}`);
  }
}

/** POST /v1/reservations for one unit, tagged `reserve`. */
export function reserve(bearer, sku, qty = 1) {
  return http.post(`${BASE_URL}/v1/reservations`, JSON.stringify({ sku, qty }),
    params(bearer, 'reserve'));
}

/** Confirms or releases (`action`) a reservation, tagged with the action. */
export function settle(bearer, id, action) {
  return http.post(`${BASE_URL}/v1/reservations/${id}/${action}`, null, params(bearer, action));
}

export function inventory(sku) {
  return http.get(`${BASE_URL}/v1/inventory/${sku}`, { tags: { name: 'inventory' } });
}

/**
 * Fails the run when the SKU holds or sold more than was stocked: with
 * `stocked` units at the start, confirmed units left on_hand and held ones
 * are in reserved, so reserved may never exceed on_hand.
 */
export function assertNotOversold(sku, stocked) {
  const res = inventory(sku);
  if (res.status !== 200) throw new Error(`reading ${sku}: ${res.status} ${res.body}`);
  const view = res.json();
  const sold = stocked - view.on_hand;
  console.log(`${sku}: stocked ${stocked}, sold ${sold}, held ${view.reserved}, available ${view.available}`);
  if (view.on_hand < 0 || view.reserved > view.on_hand || sold + view.reserved > stocked) {
    throw new Error(`OVERSOLD ${sku}: stocked ${stocked}, sold ${sold}, held ${view.reserved}`);
  }
}
