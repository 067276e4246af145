#!/usr/bin/env bash
# Installs Prometheus, promtool and Alertmanager from Debian's packages when any is
# missing; the alert-rule tests (promtool) and the drift loop test (real Prometheus
# and Alertmanager processes) need them. Does nothing when all are on PATH.
#
# Usage: hack/install-monitoring.sh
#
# Debian names Alertmanager's binary prometheus-alertmanager. The packages' services
# are not needed: the tests start their own processes on loopback ports.

set -euo pipefail

log() { printf '[monitoring] %s\n' "$*" >&2; }

have_all() {
  command -v promtool >/dev/null &&
    command -v prometheus >/dev/null &&
    { command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null; }
}

if have_all; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  log "error: prometheus, promtool or alertmanager missing and no apt-get here;"
  log "install Prometheus (with promtool) and Alertmanager and put them on PATH"
  exit 1
fi
SUDO=()
if ((EUID != 0)); then
  command -v sudo >/dev/null || {
    log "error: need root (or sudo) to apt-get install prometheus prometheus-alertmanager"
    exit 1
  }
  SUDO=(sudo)
fi
log "installing prometheus prometheus-alertmanager from Debian's packages"
"${SUDO[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
  prometheus prometheus-alertmanager >/dev/null
have_all || {
  log "error: installed, but the binaries are still not on PATH"
  exit 1
}
log "installed: $(prometheus --version 2>&1 | head -1)"
