#!/usr/bin/env bash
# Debian packages the tests use as real peers: libcoap's coap-client (CoAP interop),
# Chromium (dashboard screenshots), Mosquitto (MQTT), PostgreSQL (the scale backend).
# Installs only what is missing; needs root (or sudo) and Debian's package archive.
set -euo pipefail
need=()
{ command -v coap-client || command -v coap-client-notls || command -v coap-client-gnutls; } >/dev/null 2>&1 || need+=(libcoap3-bin)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${need[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
