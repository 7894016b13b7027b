#!/usr/bin/env bash
# Debian packages the tests use as real peers: libcoap's coap-client (CoAP interop),
# Chromium (dashboard screenshots), Mosquitto (MQTT), PostgreSQL (the scale backend), and
# Node.js with npm for MicroPython's WebAssembly port: a real 32-bit MicroPython that
# firmware/tests/test_heap_budget_wasm32.py runs the firmware on. That port (a pinned npm
# version) goes into .venv/wasm-micropython/, inside the git-ignored venv.
# Installs only what is missing; the Debian part needs root (or sudo) and Debian's archive,
# the npm part the npm registry.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
{ command -v coap-client || command -v coap-client-notls || command -v coap-client-gnutls; } >/dev/null 2>&1 || need+=(libcoap3-bin)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# MicroPython's wasm32 port; keep the version in step with WASM_VERSION in
# firmware/tests/test_heap_budget_wasm32.py
wasm_pkg=@micropython/micropython-webassembly-pyscript
wasm_version=1.29.0-6
wasm_dir=.venv/wasm-micropython
if ! grep -qs "\"version\": \"$wasm_version\"" "$wasm_dir/node_modules/$wasm_pkg/package.json"; then
  echo "installing $wasm_pkg@$wasm_version into $wasm_dir"
  mkdir -p "$wasm_dir"
  npm install --prefix "$wasm_dir" --no-save --no-package-lock --no-audit --no-fund \
    --loglevel=error "$wasm_pkg@$wasm_version"
fi
