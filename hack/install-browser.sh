#!/usr/bin/env bash
# Installs Debian's chromium when missing: the drift-report tests drive it headless with
# Playwright (from PyPI, the dev extra). Playwright's own browser download is not used,
# so nothing is fetched at test time from outside the package registries.
#
# Usage: hack/install-browser.sh

set -euo pipefail

log() { printf '[browser] %s\n' "$*" >&2; }

if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  log "error: chromium missing and no apt-get here; install a chromium on PATH"
  exit 1
fi
SUDO=()
if ((EUID != 0)); then
  command -v sudo >/dev/null || {
    log "error: need root (or sudo) to apt-get install chromium"
    exit 1
  }
  SUDO=(sudo)
fi
log "installing chromium from Debian's packages"
"${SUDO[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
  chromium >/dev/null
command -v chromium >/dev/null || {
  log "error: installed, but chromium is not on PATH"
  exit 1
}
log "installed: $(chromium --version 2>/dev/null || echo chromium)"
