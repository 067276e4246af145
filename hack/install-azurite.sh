#!/usr/bin/env bash
# Installs Azurite (Microsoft's Azure Storage emulator, MIT) from the npm registry into the
# Kubeloop cache when missing; the az:// tests start its blob service on a loopback port.
# The version is pinned in hack/versions.env (AZURITE_VERSION).
#
# Usage: hack/install-azurite.sh            install where missing
#        hack/install-azurite.sh --print-dir print the install folder, install nothing
#
# Layout ($KUBELOOP_CACHE, default ~/.cache/kubeloop):
#   bin/azurite-<version>/node_modules/.bin/azurite-blob  the server
#   bin/azurite-<version>/.stamp                          written last, after a good install

set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR
source "${HACK_DIR}/versions.env"

CACHE_DIR="${KUBELOOP_CACHE:-${HOME}/.cache/kubeloop}"
DIR="${CACHE_DIR}/bin/azurite-${AZURITE_VERSION}"

log() { printf '[azurite] %s\n' "$*" >&2; }

if [[ "${1:-}" == --print-dir ]]; then
  echo "${DIR}"
  exit 0
fi
if [[ -f "${DIR}/.stamp" && -x "${DIR}/node_modules/.bin/azurite-blob" ]]; then
  exit 0
fi
command -v npm >/dev/null || {
  log "error: npm not found; install Node.js (20 or newer) and npm"
  exit 1
}
log "installing azurite ${AZURITE_VERSION} from the npm registry into ${DIR}"
mkdir -p "${CACHE_DIR}/bin"
stage=$(mktemp -d "${CACHE_DIR}/bin/.stage-azurite.XXXXXX")
trap 'rm -rf "${stage}"' EXIT
npm install --silent --no-audit --no-fund --prefix "${stage}" "azurite@${AZURITE_VERSION}"
[[ -x "${stage}/node_modules/.bin/azurite-blob" ]] || {
  log "error: the install produced no azurite-blob"
  exit 1
}
rm -rf "${DIR}"
mv "${stage}" "${DIR}"
trap - EXIT
echo "version=${AZURITE_VERSION} node=$(node --version) installed_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  >"${DIR}/.stamp"
log "azurite ${AZURITE_VERSION} installed into ${DIR}"
