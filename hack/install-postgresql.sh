#!/usr/bin/env bash
# Installs PostgreSQL's server binaries (initdb, pg_ctl, postgres) from Debian's package
# when missing; the SQL-source tests start their own server with them. Does nothing when
# initdb is on PATH or in /usr/lib/postgresql/<version>/bin (where Debian puts it).
#
# Usage: hack/install-postgresql.sh
#
# The package's own cluster and service are not used: the tests run initdb and pg_ctl in
# a temporary folder, as the package's non-root `postgres` user, on a loopback port.

set -euo pipefail

log() { printf '[postgresql] %s\n' "$*" >&2; }

have_server() {
  command -v initdb >/dev/null && command -v pg_ctl >/dev/null && return 0
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

if have_server && id postgres >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  log "error: initdb and pg_ctl missing and no apt-get here; install PostgreSQL's server"
  log "binaries (initdb, pg_ctl) and create a non-root 'postgres' user to run them as root"
  exit 1
fi
SUDO=()
if ((EUID != 0)); then
  command -v sudo >/dev/null || {
    log "error: need root (or sudo) to apt-get install postgresql"
    exit 1
  }
  SUDO=(sudo)
fi
log "installing postgresql from Debian's packages"
"${SUDO[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
  postgresql >/dev/null
have_server || {
  log "error: installed, but initdb is neither on PATH nor in /usr/lib/postgresql/*/bin"
  exit 1
}
log "installed: $(compgen -G '/usr/lib/postgresql/*/bin/initdb' | tail -1)"
