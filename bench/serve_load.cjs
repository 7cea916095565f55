// Load for `rwkv serve` (scripts/bench-serve.sh runs it): N concurrent streaming completions,
// each a distinct prompt of about `prompt_tokens` bytes, max_tokens fixed, token 0 banned so
// every stream runs to its length. Prints one JSON line per N: aggregate and per-stream
// tokens/s, time to first token (median, p95), and the server's resident memory after the run.
//   node serve_load.cjs URL SERVER_PID "1 8 32 64" MAX_TOKENS PROMPT_BYTES
const fs = require('node:fs');
const [url, pid, levels, maxTokens, promptBytes] = process.argv.slice(2);

function rssMiB() {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]) / 1024;
}

async function one(i, n) {
  const words = ['never', 'trust', 'a', 'cookie', 'that', 'speaks', 'of', 'tomorrow', 'and', 'luck'];
  let prompt = `${n}/${i}:`;
  while (prompt.length < Number(promptBytes)) prompt += ' ' + words[(i * 7 + prompt.length) % words.length];
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ prompt, max_tokens: Number(maxTokens), temperature: 1, top_p: 0.9, seed: i,
                           logit_bias: { 0: -100 }, stream: true, stream_options: { include_usage: true } }),
  });
  if (!res.ok) throw new Error(`${res.status} ${await res.text()}`);
  let first = 0, tokens = 0, buffer = '';
  const decoder = new TextDecoder();
  for await (const bytes of res.body) {
    buffer += decoder.decode(bytes, { stream: true });
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const data = buffer.slice(6, end);
      buffer = buffer.slice(end + 2);
      if (data === '[DONE]') continue;
      const chunk = JSON.parse(data);
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      else if (!first) first = performance.now();
    }
  }
  const t1 = performance.now();
  return { ttft: (first - t0) / 1000, seconds: (t1 - t0) / 1000, tokens, decode_s: (t1 - first) / 1000 };
}

(async () => {
  for (const n of levels.split(' ').map(Number)) {
    const t0 = performance.now();
    const runs = await Promise.all(Array.from({ length: n }, (_, i) => one(i, n)));
    const wall = (performance.now() - t0) / 1000;
    const total = runs.reduce((s, r) => s + r.tokens, 0);
    const ttft = runs.map((r) => r.ttft).sort((a, b) => a - b);
    const perStream = runs.map((r) => (r.tokens - 1) / r.decode_s).sort((a, b) => a - b);
    console.log(JSON.stringify({
      streams: n, tokens: total, wall_s: +wall.toFixed(2),
      aggregate_tok_s: +(total / wall).toFixed(1),
      per_stream_tok_s_median: +perStream[Math.floor(n / 2)].toFixed(1),
      ttft_s_median: +ttft[Math.floor(n / 2)].toFixed(3),
      ttft_s_p95: +ttft[Math.min(n - 1, Math.floor(n * 0.95))].toFixed(3),
      server_rss_mib: +rssMiB().toFixed(0),
    }));
  }
})().catch((e) => { console.error(e); process.exit(1); });
