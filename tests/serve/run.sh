#!/usr/bin/env bash
# Runs one end-to-end test of `rwkv serve` (tests/serve/NAME.test.cjs) against a real server on
# the embedded demo model: installs the pinned npm packages (package-lock.json) into the build
# folder, starts the server on a free port, runs the test with Node, then stops the server
# with SIGTERM and checks that it exits cleanly.
#   run.sh RWKV_BINARY BUILD_DIR NAME
# Exit 77 (skipped) only when Node.js or Chromium (for the page test) is not installed.
set -euo pipefail
rwkv=$1 build=$(cd "$2" && pwd) name=$3
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
command -v node >/dev/null && command -v npm >/dev/null || { echo "SKIP: node/npm not installed (scripts/setup-debian.sh installs them)"; exit 77; }
if [ "$name" = chat_page ]; then
  [ -x /usr/bin/chromium ] || { echo "SKIP: /usr/bin/chromium not installed (scripts/setup-debian.sh installs it)"; exit 77; }
  # playwright-core 1.65 needs Node.js 20 (Debian 12's own is 18).
  [ "$(node -p 'process.versions.node.split(".")[0]')" -ge 20 ] || { echo "SKIP: the page test needs Node.js >= 20"; exit 77; }
fi

# Packages: installed once per lock file, shared by the tests (a lock guards parallel installs).
deps="$build/serve-npm"
mkdir -p "$deps"
(
  flock 9
  if ! cmp -s "$here/package-lock.json" "$deps/package-lock.json" || [ ! -d "$deps/node_modules" ]; then
    cp "$here/package.json" "$here/package-lock.json" "$deps/"
    (cd "$deps" && npm ci --no-audit --no-fund --loglevel=error)
  fi
) 9>"$deps/.lock"

work=$(mktemp -d)
cleanup() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

key=test-key-123
"$rwkv" serve -m "$root/models/fortunes-rwkv7.pth" --port 0 --api-key "$key" \
  --state-dir "$work/states" --state-max-files 4 --slots 8 --max-requests 40 --max-queued 64 \
  --prefill-chunk 16 --max-body-kb 64 --max-tokens-limit 4096 2>"$work/server.log" &
server_pid=$!
port=""
for _ in $(seq 1 100); do
  port=$(sed -n 's|.*on http://127.0.0.1:\([0-9]*\)/.*|\1|p' "$work/server.log")
  [ -n "$port" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; echo "the server did not start"; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { cat "$work/server.log"; echo "the server did not say its port"; exit 1; }

# The two tests run in parallel and share common.cjs: each copy is renamed into place, so a test
# never sees a half-written file (a plain cp raced: "cannot create regular file: File exists").
for f in "$name.test.cjs" common.cjs; do
  cp "$here/$f" "$deps/$f.$$" && mv -f "$deps/$f.$$" "$deps/$f"
done
status=0
(cd "$deps" && RWKV_URL="http://127.0.0.1:$port" RWKV_KEY="$key" RWKV_OUT="$build" \
  node "$name.test.cjs") || status=$?

# A clean stop on SIGTERM.
kill -TERM "$server_pid"
for _ in $(seq 1 100); do
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$server_pid" 2>/dev/null; then
  echo "the server did not stop within 10 s of SIGTERM"; status=1
else
  wait "$server_pid" || { echo "the server exited with status $? after SIGTERM"; status=1; }
fi
server_pid=""
grep -q "rwkv serve: stopped" "$work/server.log" || { echo "no clean-stop line in the log"; status=1; }
[ "$status" = 0 ] || { echo "--- server log"; tail -20 "$work/server.log"; }
exit "$status"
