#!/usr/bin/env bash
# Installs the Debian 12 packages the build and tests need. Idempotent: installs only what is missing.
set -euo pipefail
pkgs=(cmake ninja-build g++ make pkg-config libopenblas-openmp-dev libhwy-dev nlohmann-json3-dev
      libcli11-dev libgtest-dev libbenchmark-dev libpcre2-dev libutf8proc-dev
      libcpp-httplib-dev
      fortunes   # the corpus of the embedded demo model (scripts/train-demo-model.sh)
      chromium)  # the chat page's browser test (tests/serve)
# Node.js and npm for the server's end-to-end tests: Debian's, unless a Node.js is already there.
command -v node >/dev/null && command -v npm >/dev/null || pkgs+=(nodejs npm)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
