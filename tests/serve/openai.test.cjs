// rwkv serve with the official `openai` npm client: completions and chat, streaming and not,
// stop strings, errors, 32 concurrent seeded streams against their results alone, the prefix
// cache, a client that disconnects mid-stream, request limits and named states.
const OpenAI = require('openai');
const { assert, test, run, url, key, health, idle } = require('./common.cjs');

const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: key, maxRetries: 0, timeout: 120000 });
const prompt = 'Q: Why did the programmer';

async function streamText(stream) {
  let text = '', finish = null, usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    const c = chunk.choices[0];
    if (!c) continue;
    text += c.text ?? c.delta?.content ?? '';
    if (c.finish_reason) finish = c.finish_reason;
  }
  return { text, finish, usage };
}

async function status(fn) {
  try {
    await fn();
  } catch (e) {
    return e;
  }
  throw new Error('the request succeeded but should have failed');
}

test('models', async () => {
  const models = await client.models.list();
  assert.equal(models.data.length, 1);
  assert.equal(models.data[0].id, 'fortunes-rwkv7');
});

test('completion, whole and streamed, give the same text', async () => {
  const params = { model: 'fortunes-rwkv7', prompt, max_tokens: 48, temperature: 0.8, top_p: 0.9, seed: 11 };
  const whole = await client.completions.create(params);
  assert.equal(whole.object, 'text_completion');
  assert.ok(whole.id.startsWith('cmpl-'));
  const text = whole.choices[0].text;
  assert.ok(text.length > 0);
  assert.ok(['stop', 'length'].includes(whole.choices[0].finish_reason));
  assert.equal(whole.usage.prompt_tokens, Buffer.byteLength(prompt));
  assert.equal(whole.usage.total_tokens, whole.usage.prompt_tokens + whole.usage.completion_tokens);
  const streamed = await streamText(await client.completions.create({
    ...params, stream: true, stream_options: { include_usage: true } }));
  assert.equal(streamed.text, text);
  assert.equal(streamed.finish, whole.choices[0].finish_reason);
  assert.equal(streamed.usage.completion_tokens, whole.usage.completion_tokens);
});

test('chat, whole and streamed, give the same reply', async () => {
  const params = { model: 'fortunes-rwkv7', messages: [{ role: 'user', content: 'Tell me a fortune.' }],
                   max_tokens: 40, temperature: 0.7, seed: 5 };
  const whole = await client.chat.completions.create(params);
  assert.equal(whole.object, 'chat.completion');
  assert.equal(whole.choices[0].message.role, 'assistant');
  const reply = whole.choices[0].message.content;
  assert.ok(!reply.includes('\n\n'), 'a reply ends at the first blank line');
  const streamed = await streamText(await client.chat.completions.create({ ...params, stream: true }));
  assert.equal(streamed.text, reply);
  assert.equal(streamed.finish, whole.choices[0].finish_reason);
});

test('stop strings end the text before them', async () => {
  const params = { prompt, max_tokens: 60, temperature: 0, logit_bias: { 0: -100 }, model: 'm' };
  const full = (await client.completions.create(params)).choices[0].text;
  assert.ok(full.length > 20, full);
  const stop = full.slice(12, 15);
  const cut = full.slice(0, full.indexOf(stop));
  const stopped = await client.completions.create({ ...params, stop: [stop, 'never-there'] });
  assert.equal(stopped.choices[0].text, cut);
  assert.equal(stopped.choices[0].finish_reason, 'stop');
  const streamed = await streamText(await client.completions.create({ ...params, stop, stream: true }));
  assert.equal(streamed.text, cut);
  assert.equal(streamed.finish, 'stop');
});

test('errors have the OpenAI shape and status', async () => {
  const bad = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'wrong', maxRetries: 0 });
  let e = await status(() => bad.completions.create({ model: 'm', prompt }));
  assert.equal(e.status, 401);
  e = await status(() => client.completions.create({ model: 'm', prompt, temperature: 5 }));
  assert.equal(e.status, 400);
  assert.equal(e.param, 'temperature');
  e = await status(() => client.completions.create({ model: 'm', prompt: [1, 999] }));
  assert.equal(e.status, 400);
  e = await status(() => client.completions.create({ model: 'm', prompt, max_tokens: 5000 }));
  assert.equal(e.param, 'max_tokens');
  e = await status(() => client.chat.completions.create({ model: 'm', messages: [{ role: 'wizard', content: 'x' }] }));
  assert.equal(e.status, 400);
  e = await status(() => client.completions.create({ model: 'm', prompt, n: 2 }));
  assert.equal(e.param, 'n');
  e = await status(() => client.completions.create({ model: 'm', prompt, state: 'nobody' }));
  assert.equal(e.status, 404);
  e = await status(() => client.completions.create({ model: 'm', prompt, state: '../../etc/passwd' }));
  assert.equal(e.status, 400);
  e = await status(() => client.completions.create({ model: 'm', prompt, save_state: 'a/b' }));
  assert.equal(e.status, 400);
  // Raw HTTP: malformed JSON, a body over the limit, an unknown route.
  const post = (body) => fetch(`${url}/v1/completions`, {
    method: 'POST', headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' }, body });
  let res = await post('{"prompt": ');
  assert.equal(res.status, 400);
  assert.match((await res.json()).error.message, /not valid JSON/);
  res = await post(JSON.stringify({ prompt: 'x'.repeat(100 * 1024) }));
  assert.equal(res.status, 413);
  assert.ok((await res.json()).error.message);
  res = await fetch(`${url}/v1/nothing`);
  assert.equal(res.status, 404);
  assert.equal((await health()).status, 'ok');
});

test('32 concurrent seeded streams each give exactly their tokens alone', async () => {
  const params = (i) => ({ model: 'm', prompt: `${['Never trust a', 'The secret of life is', prompt][i % 3]}`,
                           max_tokens: 32, temperature: 1, top_p: 0.95, seed: 1000 + i, stream: true });
  const alone = [];
  for (let i = 0; i < 32; i++) alone.push(await streamText(await client.completions.create(params(i))));
  const t0 = Date.now();
  const together = await Promise.all(
    Array.from({ length: 32 }, async (_, i) => streamText(await client.completions.create(params(i)))));
  const seconds = (Date.now() - t0) / 1000;
  for (let i = 0; i < 32; i++) assert.equal(together[i].text, alone[i].text, `stream ${i}`);
  const distinct = new Set(alone.map((r) => r.text)).size;
  assert.ok(distinct > 16, `seeds give different texts (${distinct} distinct)`);
  console.log(`     32 streams together in ${seconds.toFixed(2)} s`);
});

test('the prefix cache skips a resent history and gives the same reply', async () => {
  const history = [
    { role: 'system', content: 'You answer with fortunes.' },
    { role: 'user', content: 'What does tomorrow hold for a careful programmer?' },
    { role: 'assistant', content: 'A bug you did not write, and a fix you will.' },
  ];
  const ask = (messages) => client.chat.completions.create({ model: 'm', messages, max_tokens: 30, temperature: 0 });
  const turn = [...history, { role: 'user', content: 'And after that?' }];
  const first = await ask(turn);
  const again = await ask(turn);
  assert.equal(again.choices[0].message.content, first.choices[0].message.content);
  const cached = again.usage.prompt_tokens_details.cached_tokens;
  assert.ok(cached >= again.usage.prompt_tokens - 16, `cached ${cached} of ${again.usage.prompt_tokens}`);
  const longer = await ask([...turn, { role: 'assistant', content: first.choices[0].message.content },
                            { role: 'user', content: 'Thanks.' }]);
  assert.ok(longer.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 16);
});

test('a client that disconnects mid-stream frees its slot', async () => {
  await idle();
  const before = (await health()).jobs_done;
  const controller = new AbortController();
  const stream = await client.completions.create(
    { model: 'm', prompt, max_tokens: 4000, logit_bias: { 0: -100 }, stream: true },
    { signal: controller.signal });
  let pieces = 0;
  try {
    for await (const chunk of stream) {
      if (++pieces === 3) controller.abort();
    }
  } catch (e) {
    assert.ok(controller.signal.aborted, `${e}`);
  }
  const h = await idle();
  assert.equal(h.jobs_done, before + 1);
  assert.ok(h.tokens_generated < 4000 * 1000);
});

test('requests beyond the limit get 429 and the server carries on', async () => {
  await idle();
  const controllers = [];
  const started = Array.from({ length: 48 }, async () => {
    const c = new AbortController();
    controllers.push(c);
    try {
      const s = await client.completions.create(
        { model: 'm', prompt, max_tokens: 4000, logit_bias: { 0: -100 }, stream: true }, { signal: c.signal });
      await s[Symbol.asyncIterator]().next();  // a first piece came: it runs, and stays open
      return 'ran';
    } catch (e) {
      return e.status === 429 ? 429 : `${e}`;
    }
  });
  const outcomes = await Promise.all(started);
  controllers.forEach((c) => c.abort());
  // --max-requests 40: 40 run (8 in slots, 32 queued behind them), 8 are refused.
  assert.equal(outcomes.filter((o) => o === 429).length, 8, JSON.stringify(outcomes));
  assert.equal(outcomes.filter((o) => o === 'ran').length, 40, JSON.stringify(outcomes));
  await idle(10000);
  const ok = await client.completions.create({ model: 'm', prompt, max_tokens: 4 });
  assert.equal(ok.usage.completion_tokens, 4);
});

test('named states: save a final state, continue from it, list it', async () => {
  const a = await client.completions.create({ model: 'm', prompt: 'Never trust a', max_tokens: 20, temperature: 0,
                                              logit_bias: { 0: -100 }, save_state: 'after-a' });
  assert.equal(a.rwkv.state_saved, 'after-a');
  const listed = await (await fetch(`${url}/v1/states`, { headers: { Authorization: `Bearer ${key}` } })).json();
  assert.deepEqual(listed.data, ['after-a']);
  // Continuing from the saved state equals sending the whole text.
  const cont = await client.completions.create({ model: 'm', prompt: ' and', max_tokens: 20, temperature: 0,
                                                 state: 'after-a' });
  const whole = await client.completions.create({ model: 'm', prompt: `Never trust a${a.choices[0].text} and`,
                                                  max_tokens: 20, temperature: 0 });
  assert.equal(cont.choices[0].text, whole.choices[0].text);
  // The folder is bounded (4 files): the fifth name is refused with 507 and the text still comes.
  for (const n of ['s2', 's3', 's4']) {
    await client.completions.create({ model: 'm', prompt: 'x', max_tokens: 1, save_state: n });
  }
  const e = await status(() => client.completions.create({ model: 'm', prompt: 'x', max_tokens: 1, save_state: 's5' }));
  assert.equal(e.status, 507);
});

run();
