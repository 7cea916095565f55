// The chat page served at "/" (no build step, no external resources): keeps the conversation in
// the page, sends it whole to /v1/chat/completions with stream: true each turn (the server's
// prefix cache makes the history cheap) and shows the reply as its pieces arrive.
#include "serve/http_server.h"

namespace rwkv::serve {

const char* const kChatPageHtml = R"html(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rwkv chat</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; max-width: 46rem; margin: 0 auto; padding: 1rem;
         display: flex; flex-direction: column; height: 100vh; box-sizing: border-box; }
  #messages { flex: 1; overflow-y: auto; }
  .msg { white-space: pre-wrap; margin: .5rem 0; padding: .5rem .75rem; border-radius: .5rem; }
  .user { background: #e8eefc; }
  .assistant { background: #f3f3f3; }
  .error { background: #fde8e8; color: #900; }
  form { display: flex; gap: .5rem; }
  #input { flex: 1; font: inherit; padding: .5rem; }
  details { margin-bottom: .5rem; font-size: 13px; }
  label { margin-right: 1rem; }
</style>
</head>
<body>
<details>
  <summary>Settings</summary>
  <label>API key <input id="api-key" type="password" size="20"></label>
  <label>temperature <input id="temperature" type="number" value="1" min="0" max="2" step="0.1" style="width:4rem"></label>
  <label>top_p <input id="top-p" type="number" value="0.3" min="0" max="1" step="0.05" style="width:4rem"></label>
  <label>max tokens <input id="max-tokens" type="number" value="500" min="1" style="width:5rem"></label>
  <button id="reset" type="button">New chat</button>
</details>
<div id="messages" aria-live="polite"></div>
<form id="form">
  <input id="input" autocomplete="off" placeholder="Message" aria-label="Message">
  <button id="send" type="submit">Send</button>
</form>
<script>
const history = [];
const $ = (id) => document.getElementById(id);

function bubble(cls, text) {
  const div = document.createElement('div');
  div.className = 'msg ' + cls;
  div.textContent = text;
  $('messages').appendChild(div);
  div.scrollIntoView();
  return div;
}

async function send(text) {
  history.push({ role: 'user', content: text });
  bubble('user', text);
  const reply = bubble('assistant', '');
  const headers = { 'Content-Type': 'application/json' };
  if ($('api-key').value) headers['Authorization'] = 'Bearer ' + $('api-key').value;
  const body = {
    messages: history, stream: true,
    temperature: Number($('temperature').value), top_p: Number($('top-p').value),
    max_tokens: Number($('max-tokens').value),
  };
  $('send').disabled = true;
  try {
    const res = await fetch('/v1/chat/completions', { method: 'POST', headers, body: JSON.stringify(body) });
    if (!res.ok) {
      const err = await res.json().catch(() => ({}));
      throw new Error((err.error && err.error.message) || res.statusText);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (!line.startsWith('data: ')) continue;
        const data = line.slice(6);
        if (data === '[DONE]') continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          reply.textContent += delta.content;
          reply.scrollIntoView();
        }
      }
    }
    history.push({ role: 'assistant', content: reply.textContent.trim() });
    reply.dataset.done = 'true';
  } catch (e) {
    reply.remove();
    history.pop();
    bubble('error', 'Error: ' + e.message);
  } finally {
    $('send').disabled = false;
  }
}

$('form').addEventListener('submit', (e) => {
  e.preventDefault();
  const text = $('input').value.trim();
  if (!text) return;
  $('input').value = '';
  send(text);
});
$('reset').addEventListener('click', () => { history.length = 0; $('messages').replaceChildren(); });
</script>
</body>
</html>
)html";

}  // namespace rwkv::serve
