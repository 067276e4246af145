#!/usr/bin/env bash
# Prints the folder of the Gateway API's standard-channel CRDs (config/crd/standard/ of
# the pinned sigs.k8s.io/gateway-api module, GATEWAY_API_VERSION in hack/versions.env),
# fetched through the Go module proxy into the kubeloop cache when missing. The tests of
# `canary.router: gateway` install HTTPRoute from there into their API server.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR
source "${HACK_DIR}/versions.env"
CACHE_DIR="${KUBELOOP_CACHE:-${HOME}/.cache/kubeloop}"

command -v go >/dev/null || {
  echo "gateway-api-crds: go is not on PATH (the CRDs come through the Go module proxy)" >&2
  exit 1
}
export GOMODCACHE="${CACHE_DIR}/go/mod" GOFLAGS="-modcacherw" GOTOOLCHAIN=local GOWORK=off
mkdir -p "${CACHE_DIR}"
dir=$(cd "${CACHE_DIR}" && go mod download -json "sigs.k8s.io/gateway-api@${GATEWAY_API_VERSION}" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
crds="${dir}/config/crd/standard"
[[ -f "${crds}/gateway.networking.k8s.io_httproutes.yaml" ]] || {
  echo "gateway-api-crds: no HTTPRoute CRD in ${crds}" >&2
  exit 1
}
echo "${crds}"
