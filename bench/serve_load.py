#!/usr/bin/env python3
"""Load for `rwkv serve` (scripts/bench-serve.sh runs it; Python's standard library only).

N concurrent streaming completions, each a distinct prompt of about PROMPT_BYTES bytes, a fixed
max_tokens and token 0 banned, so every stream runs to its length. Prints one JSON line per N:
aggregate and per-stream tokens/s, time to first token (median, p95) and the server's resident
memory after the run. $RWKV_BENCH_TEMPERATURE sets the temperature (default 1; 0 is greedy).
    serve_load.py URL SERVER_PID "1 8 32 64" MAX_TOKENS PROMPT_BYTES
With LEVELS "cache": the prefix cache instead, the time to first token of a PROMPT_BYTES prompt
sent cold, then again (its state comes from the cache), then extended by a new turn.
"""
import os
import http.client
import json
import sys
import threading
import time
import urllib.parse

url, pid, levels, max_tokens, prompt_bytes = sys.argv[1:6]
max_tokens, prompt_bytes = int(max_tokens), int(prompt_bytes)
host = urllib.parse.urlparse(url)
WORDS = ["never", "trust", "a", "cookie", "that", "speaks", "of", "tomorrow", "and", "luck"]


def rss_mib():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


TEMPERATURE = float(os.environ.get("RWKV_BENCH_TEMPERATURE", "1"))


def make_prompt(tag, i):
    prompt = tag
    while len(prompt) < prompt_bytes:
        prompt += " " + WORDS[(i * 7 + len(prompt)) % len(WORDS)]
    return prompt


def one(i, n, out, prompt=None):
    prompt = prompt or make_prompt(f"{n}/{i}:", i)
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": TEMPERATURE, "top_p": 0.9,
                       "seed": i, "logit_bias": {"0": -100}, "stream": True,
                       "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    res = conn.getresponse()
    if res.status != 200:
        raise RuntimeError(f"{res.status} {res.read()!r}")
    first, tokens = 0.0, 0
    for line in res:
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        elif not first:
            first = time.perf_counter()
    t1 = time.perf_counter()
    conn.close()
    out[i] = {"ttft": first - t0, "tokens": tokens, "decode_s": t1 - first}


if levels == "cache":
    history = make_prompt(f"cache {time.time()}:", 3)
    runs = {}
    for name, prompt in [("cold", history), ("again", history), ("new_turn", history + " and one more line")]:
        out = [None]
        one(0, 1, out, prompt)
        runs[name + "_ttft_s"] = round(out[0]["ttft"], 3)
    print(json.dumps({"prompt_bytes": prompt_bytes, **runs, "server_rss_mib": round(rss_mib())}))
    sys.exit(0)

for n in map(int, levels.split()):
    out = [None] * n
    threads = [threading.Thread(target=one, args=(i, n, out)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if any(r is None for r in out):
        sys.exit("a stream failed")
    total = sum(r["tokens"] for r in out)
    ttft = sorted(r["ttft"] for r in out)
    per_stream = sorted((r["tokens"] - 1) / r["decode_s"] for r in out)
    print(json.dumps({
        "streams": n, "tokens": total, "wall_s": round(wall, 2),
        "aggregate_tok_s": round(total / wall, 1),
        "per_stream_tok_s_median": round(per_stream[n // 2], 1),
        "ttft_s_median": round(ttft[n // 2], 3),
        "ttft_s_p95": round(ttft[min(n - 1, int(n * 0.95))], 3),
        "server_rss_mib": round(rss_mib()),
    }), flush=True)
