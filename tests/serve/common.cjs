// A small test runner for the end-to-end tests: named async tests run in order, failures are
// counted and the process exits non-zero if any failed.
const assert = require('node:assert/strict');

const tests = [];
function test(name, fn) { tests.push({ name, fn }); }

async function run() {
  let failed = 0;
  for (const t of tests) {
    const t0 = Date.now();
    try {
      await t.fn();
      console.log(`ok   ${t.name} (${Date.now() - t0} ms)`);
    } catch (e) {
      failed++;
      console.log(`FAIL ${t.name}\n${e && e.stack ? e.stack : e}`);
    }
  }
  console.log(`${tests.length - failed}/${tests.length} passed`);
  process.exit(failed ? 1 : 0);
}

const url = process.env.RWKV_URL;
const key = process.env.RWKV_KEY;

async function health() {
  const res = await fetch(`${url}/health`);
  return res.json();
}

// Waits until the server has no job running and no request open.
async function idle(ms = 5000) {
  const end = Date.now() + ms;
  for (;;) {
    const h = await health();
    if (h.active === 0 && h.queued === 0 && h.requests_in_flight === 0) return h;
    if (Date.now() > end) throw new Error(`server still busy: ${JSON.stringify(h)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

module.exports = { assert, test, run, url, key, health, idle };
