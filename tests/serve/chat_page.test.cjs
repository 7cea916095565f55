// The chat page at "/" in headless Chromium (Debian's, driven by playwright-core): it loads,
// sends a message with the API key from its settings, and shows the streamed reply.
const { chromium } = require('playwright-core');
const { assert, test, run, url, key, idle } = require('./common.cjs');

test('the page sends a message and shows the streamed reply', async () => {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(`${url}/`);
    assert.equal(await page.title(), 'rwkv chat');
    await page.click('summary');
    await page.fill('#api-key', key);
    await page.fill('#max-tokens', '40');
    await page.fill('#input', 'Tell me my fortune.');
    await page.click('#send');
    const reply = page.locator('.assistant[data-done="true"]');
    await reply.waitFor({ timeout: 60000 });
    assert.equal(await page.locator('.user').textContent(), 'Tell me my fortune.');
    const text = await reply.textContent();
    assert.ok(text.trim().length > 0, 'the reply is not empty');
    assert.equal(await page.locator('.error').count(), 0);
    // A second turn resends the history and gets a second reply.
    await page.fill('#input', 'Another one?');
    await page.click('#send');
    await page.locator('.assistant[data-done="true"]').nth(1).waitFor({ timeout: 60000 });
    if (process.env.RWKV_OUT) await page.screenshot({ path: `${process.env.RWKV_OUT}/chat_page.png` });
    assert.deepEqual(errors, []);
    // Without the key the page shows the server's error.
    await page.fill('#api-key', '');
    await page.fill('#input', 'hello?');
    await page.click('#send');
    await page.locator('.error').waitFor({ timeout: 10000 });
    assert.match(await page.locator('.error').textContent(), /API key/);
  } finally {
    await browser.close();
  }
  await idle();
});

run();
