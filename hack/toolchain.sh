#!/usr/bin/env bash
# Builds the pinned Kubernetes toolchain (control plane, etcd, kwok, helm) from
# source. Everything comes through the Go module proxy: no release downloads, no
# container images. Versions are pinned in hack/versions.env.
#
# Usage:
#   hack/toolchain.sh [COMPONENT...]        build what is missing (default: all)
#   hack/toolchain.sh --print-dir COMPONENT print the bin dir of COMPONENT, build nothing
#
# Components and their binaries:
#   kubernetes  kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy
#   etcd        etcd
#   kwok        kwok
#   helm        helm
#   versitygw   versitygw (Versity Gateway: the real S3 server the object-storage tests start)
#   fake-gcs-server fake-gcs-server (the GCS emulator the gs:// tests start)
#   ghz         ghz (the gRPC load generator of make bench-serving; only when named)
#
# Layout ($KUBELOOP_CACHE, default ~/.cache/kubeloop):
#   bin/<component>-<version>/<binary>  the binaries
#   bin/<component>-<version>/.stamp    written last, only after a successful build
#   go/mod, go/build                    GOMODCACHE and GOCACHE, shared by all components
#                                       and versions so that rebuilds are warm
#   src/<component>-<version>/          generated Go modules that drive the builds
#   locks/<component>.lock              concurrent runs wait for each other
#
# Binaries supplied from outside are not built: TEST_ASSET_KUBE_APISERVER,
# TEST_ASSET_ETCD, TEST_ASSET_KUBECTL (paths to binaries) or KUBEBUILDER_ASSETS
# (a dir holding kube-apiserver, etcd and kubectl), with the same precedence as
# controller-runtime's envtest. The test code then uses those binaries instead.

set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR
source "${HACK_DIR}/versions.env"

CACHE_DIR="${KUBELOOP_CACHE:-${HOME}/.cache/kubeloop}"
COMPONENTS=(kubernetes etcd kwok helm versitygw fake-gcs-server)
# built only when named (not by a plain hack/toolchain.sh)
ON_REQUEST=(ghz)
KUBERNETES_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
STAGE_DIRS=()
trap 'if ((${#STAGE_DIRS[@]})); then rm -rf "${STAGE_DIRS[@]}"; fi' EXIT

log() { printf '[toolchain] %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

# component_version COMPONENT: the pinned version; dies on an unknown component.
component_version() {
  case "$1" in
    kubernetes) echo "${KUBERNETES_VERSION}" ;;
    etcd) echo "${ETCD_VERSION}" ;;
    kwok) echo "${KWOK_VERSION}" ;;
    helm) echo "${HELM_VERSION}" ;;
    versitygw) echo "${VERSITYGW_VERSION}" ;;
    fake-gcs-server) echo "${FAKE_GCS_SERVER_VERSION}" ;;
    ghz) echo "${GHZ_VERSION}" ;;
    *) die "unknown component '$1' (known: ${COMPONENTS[*]} ${ON_REQUEST[*]})" ;;
  esac
}

component_binaries() {
  case "$1" in
    kubernetes) printf '%s\n' "${KUBERNETES_BINARIES[@]}" ;;
    *) echo "$1" ;;
  esac
}

bin_dir() { echo "${CACHE_DIR}/bin/$1-$2"; }

# external_binary NAME: prints the binary supplied from outside for NAME, if any.
external_binary() {
  local name=$1 var
  case "${name}" in
    kube-apiserver) var=TEST_ASSET_KUBE_APISERVER ;;
    etcd) var=TEST_ASSET_ETCD ;;
    kubectl) var=TEST_ASSET_KUBECTL ;;
    *) return 1 ;;
  esac
  if [[ -n "${!var:-}" ]]; then
    if [[ -x "${!var}" ]]; then
      echo "${var}=${!var}"
      return 0
    fi
    log "warning: ${var}=${!var} is not an executable file; building ${name}"
  fi
  if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
    if [[ -x "${KUBEBUILDER_ASSETS}/${name}" ]]; then
      echo "KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS}"
      return 0
    fi
    log "warning: KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS} has no executable ${name}; building it"
  fi
  return 1
}

# wanted_binaries COMPONENT: its binaries less those supplied from outside.
wanted_binaries() {
  local b from
  while read -r b; do
    if from=$(external_binary "${b}"); then
      log "${b}: not built, ${from} is set and the tests use that"
    else
      echo "${b}"
    fi
  done < <(component_binaries "$1")
}

# The Go environment of every build. Caches live under the kubeloop cache so a
# second run (or CI on the same machine) downloads and compiles nothing again.
setup_go_env() {
  command -v go >/dev/null || die "go is not on PATH"
  export GOMODCACHE="${CACHE_DIR}/go/mod"
  export GOCACHE="${CACHE_DIR}/go/build"
  # Never fetch another Go toolchain: the one on PATH builds, or the build fails
  # with a clear "requires go >= X" message.
  export GOTOOLCHAIN=local
  # A go.work further up must not leak into the generated modules.
  export GOWORK=off
  # The generated modules have no VCS; -modcacherw keeps the module cache
  # removable with a plain rm -rf. Replaces the user's GOFLAGS (-mod=vendor
  # and the like would break these builds).
  export GOFLAGS="-buildvcs=false -modcacherw"
  # Static binaries: no C toolchain needed, and they run anywhere.
  export CGO_ENABLED=0
}

# mod_field MODULE@VERSION FIELD: one field of `go mod download -json`
# (GoMod, Info, Dir, ...), downloading the module if needed.
mod_field() {
  (cd "${CACHE_DIR}" && go mod download -json "$1") |
    sed -n "s/^[[:space:]]*\"$2\": \"\(.*\)\",\{0,1\}\$/\1/p"
}

# write_if_changed FILE: stdin to FILE, only when the content differs, so the
# go.sum beside an unchanged go.mod stays valid and reruns stay offline.
write_if_changed() {
  local tmp="$1.tmp"
  cat >"${tmp}"
  if cmp -s "${tmp}" "$1"; then
    rm -f "${tmp}"
  else
    mv -f "${tmp}" "$1"
    rm -f "$(dirname "$1")/go.sum"
  fi
}

# ---------------------------------------------------------------------------
# kubernetes
#
# k8s.io/kubernetes is not meant to be used as a dependency: its go.mod requires
# the staging modules (k8s.io/api, k8s.io/client-go, ...) at v0.0.0 and replaces
# them with ./staging/src/... paths that exist only inside its own repository.
# A generated module requires k8s.io/kubernetes and replaces every staging
# module with its published twin, v0.X.Y for Kubernetes v1.X.Y. The list is read
# from upstream's go.mod, so a version bump needs no edit here.
build_kubernetes() {
  local version=$1 out=$2
  shift 2
  local src="${CACHE_DIR}/src/kubernetes-${version}"
  local upstream_mod info go_line build_date staging_version="v0.${version#v1.}"
  local -a staging godebug

  upstream_mod=$(mod_field "k8s.io/kubernetes@${version}" GoMod)
  info=$(mod_field "k8s.io/kubernetes@${version}" Info)
  [[ -f "${upstream_mod}" ]] || die "no go.mod downloaded for k8s.io/kubernetes@${version}"

  # `replace k8s.io/api => ./staging/src/k8s.io/api`, in a block or on its own.
  mapfile -t staging < <(awk '$1 == "replace" { $1 = ""; $0 = $0 }
                              $2 == "=>" && $3 ~ /^\.\/staging\// { print $1 }' "${upstream_mod}")
  ((${#staging[@]})) || die "no staging replace directives found in ${upstream_mod}"
  # Keep upstream's language version and GODEBUG defaults: in Go the main module
  # decides them, and this generated module is the main module now.
  go_line=$(awk '$1 == "go" { print $2; exit }' "${upstream_mod}")
  mapfile -t godebug < <(awk '/^godebug \(/ { b = 1 } b || /^godebug [^(]/ { print } b && /^\)/ { b = 0 }' \
    "${upstream_mod}")

  mkdir -p "${src}"
  {
    echo "// Generated by hack/toolchain.sh: builds Kubernetes ${version} from the module proxy."
    echo "module kubeloop.local/toolchain/kubernetes"
    echo
    echo "go ${go_line}"
    if ((${#godebug[@]})); then printf '%s\n' "${godebug[@]}"; fi
    echo
    echo "require k8s.io/kubernetes ${version}"
    echo
    echo "replace ("
    for m in "${staging[@]}"; do printf '\t%s => %s %s\n' "${m}" "${m}" "${staging_version}"; done
    echo ")"
  } | write_if_changed "${src}/go.mod"

  # What hack/lib/version.sh sets, so `kubectl version` and /version tell the
  # real version. A module zip carries no git commit: gitCommit is left empty
  # (instead of the "$Format:%H$" placeholder) and the tree state says
  # "archive", as upstream does for source without git. The build date is the
  # tag's time, so the binaries are reproducible.
  local major minor ldflags="-s -w" pkg
  major=${version#v}
  major=${major%%.*}
  minor=${version#v*.}
  minor=${minor%%.*}
  build_date=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "${info}")
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X ${pkg}.gitVersion=${version} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor}"
    ldflags+=" -X ${pkg}.gitCommit= -X ${pkg}.gitTreeState=archive -X ${pkg}.buildDate=${build_date}"
  done

  local -a pkgs=()
  local b
  for b in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/${b}"); done
  # One invocation for all binaries, so the packages they share compile once.
  # The tags are those of upstream's release builds (hack/lib/golang.sh).
  # -mod=mod lets go fill in go.sum (checked against the checksum database).
  (cd "${src}" && go build -mod=mod -trimpath -tags=selinux,notest,grpcnotrace \
    -ldflags="${ldflags}" -o "${out}/" "${pkgs[@]}")
}

# ---------------------------------------------------------------------------
# etcd
#
# The etcd binary's main package is go.etcd.io/etcd/server/v3 itself (the root
# module's main.go just forwards to it). Its go.mod has local replace
# directives, which makes `go install ...@version` refuse it, so a generated
# module requires it and builds it.
build_etcd() {
  local version=$1 out=$2
  local src="${CACHE_DIR}/src/etcd-${version}" upstream_mod go_line
  upstream_mod=$(mod_field "go.etcd.io/etcd/server/v3@${version}" GoMod)
  [[ -f "${upstream_mod}" ]] || die "no go.mod downloaded for go.etcd.io/etcd/server/v3@${version}"
  go_line=$(awk '$1 == "go" { print $2; exit }' "${upstream_mod}")
  mkdir -p "${src}"
  {
    echo "// Generated by hack/toolchain.sh: builds etcd ${version} from the module proxy."
    echo "module kubeloop.local/toolchain/etcd"
    echo
    echo "go ${go_line}"
    echo
    echo "require go.etcd.io/etcd/server/v3 ${version}"
  } | write_if_changed "${src}/go.mod"
  (cd "${src}" && go build -mod=mod -trimpath -ldflags="-s -w" -o "${out}/etcd" go.etcd.io/etcd/server/v3)
}

# ---------------------------------------------------------------------------
# kwok: a plain `go install`; its version string is already in the source.
build_kwok() {
  local version=$1 out=$2
  (cd "${CACHE_DIR}" && GOBIN="${out}" go install -trimpath -ldflags="-s -w" "sigs.k8s.io/kwok/cmd/kwok@${version}")
}

# ---------------------------------------------------------------------------
# helm: a plain `go install` with the ldflags of helm's Makefile: the version,
# and the Kubernetes version `helm template` assumes offline (one above the
# major of the client-go helm was built with, as upstream computes it).
build_helm() {
  local version=$1 out=$2
  local upstream_mod client_go major minor v=helm.sh/helm/v3
  upstream_mod=$(mod_field "helm.sh/helm/v3@${version}" GoMod)
  client_go=$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "${upstream_mod}")
  [[ "${client_go}" =~ ^v([0-9]+)\.([0-9]+)\. ]] || die "cannot read k8s.io/client-go's version from ${upstream_mod}"
  major=$((BASH_REMATCH[1] + 1))
  minor=${BASH_REMATCH[2]}
  local ldflags="-s -w -X ${v}/internal/version.version=${version} -X ${v}/internal/version.gitTreeState=clean"
  ldflags+=" -X ${v}/pkg/lint/rules.k8sVersionMajor=${major} -X ${v}/pkg/lint/rules.k8sVersionMinor=${minor}"
  ldflags+=" -X ${v}/pkg/chartutil.k8sVersionMajor=${major} -X ${v}/pkg/chartutil.k8sVersionMinor=${minor}"
  (cd "${CACHE_DIR}" && GOBIN="${out}" go install -trimpath -ldflags="${ldflags}" "${v}/cmd/helm@${version}")
}

# ---------------------------------------------------------------------------
# versitygw: a plain `go install` (its go.mod has no replace directives) with the
# ldflags of its Makefile, so `versitygw --version` tells the tag. No commit or
# build time: a module zip carries neither.
build_versitygw() {
  local version=$1 out=$2
  local ldflags="-s -w -X=main.Version=${version} -X=main.Build=module-proxy -X=main.BuildTime=none"
  (cd "${CACHE_DIR}" && GOBIN="${out}" go install -trimpath -ldflags="${ldflags}" \
    "github.com/versity/versitygw/cmd/versitygw@${version}")
}

# ---------------------------------------------------------------------------
# fake-gcs-server: a plain `go install` (no replace directives, no version ldflags).
build_fake-gcs-server() {
  local version=$1 out=$2
  (cd "${CACHE_DIR}" && GOBIN="${out}" go install -trimpath -ldflags="-s -w" \
    "github.com/fsouza/fake-gcs-server@${version}")
}

# ---------------------------------------------------------------------------
# ghz: a plain `go install` (no replace directives, no version ldflags).
build_ghz() {
  local version=$1 out=$2
  (cd "${CACHE_DIR}" && GOBIN="${out}" go install -trimpath -ldflags="-s -w" \
    "github.com/bojand/ghz/cmd/ghz@${version}")
}

# ---------------------------------------------------------------------------

# ensure COMPONENT: builds the component's missing binaries.
# The build writes into a fresh staging dir; binaries are moved into the bin
# dir only once the whole build has succeeded, and the stamp is written last.
# A killed build leaves no stamp and no half-written binary, and is redone.
ensure() {
  local component=$1 version dir stage b lock start
  version=$(component_version "${component}")
  dir=$(bin_dir "${component}" "${version}")
  local -a wanted missing=()
  mapfile -t wanted < <(wanted_binaries "${component}")
  if ((${#wanted[@]} == 0)); then
    log "${component} ${version}: every binary is supplied from outside, nothing to build"
    return
  fi

  mkdir -p "${CACHE_DIR}/locks" "${CACHE_DIR}/bin"
  exec {lock}>"${CACHE_DIR}/locks/${component}.lock"
  flock "${lock}" # another run building this component: wait for it, then reuse its work

  if [[ -f "${dir}/.stamp" ]]; then
    for b in "${wanted[@]}"; do [[ -x "${dir}/${b}" ]] || missing+=("${b}"); done
  else
    missing=("${wanted[@]}")
  fi
  if ((${#missing[@]} == 0)); then
    log "${component} ${version}: up to date in ${dir}"
    exec {lock}>&-
    return
  fi

  log "${component} ${version}: building ${missing[*]} (a cold build takes minutes)"
  start=${SECONDS}
  stage=$(mktemp -d "${CACHE_DIR}/bin/.stage-${component}-${version}.XXXXXX")
  STAGE_DIRS+=("${stage}")
  "build_${component}" "${version}" "${stage}" "${missing[@]}"

  mkdir -p "${dir}"
  rm -f "${dir}/.stamp"
  for b in "${missing[@]}"; do
    [[ -x "${stage}/${b}" ]] || die "${component}: the build produced no ${b}"
    mv -f "${stage}/${b}" "${dir}/${b}"
  done
  rm -rf "${stage}"
  {
    echo "component=${component}"
    echo "version=${version}"
    echo "go=$(go env GOVERSION)"
    echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "build_seconds=$((SECONDS - start))"
    echo "binaries=$(cd "${dir}" && find . -maxdepth 1 -type f -perm -u+x -printf '%f ' | xargs)"
  } >"${dir}/.stamp.tmp"
  mv -f "${dir}/.stamp.tmp" "${dir}/.stamp"
  log "${component} ${version}: built in $((SECONDS - start))s into ${dir}"
  exec {lock}>&-
}

main() {
  case "${1:-}" in
    -h | --help)
      usage
      return
      ;;
    --print-dir)
      (($# == 2)) || die "usage: $0 --print-dir COMPONENT"
      local version
      version=$(component_version "$2")
      bin_dir "$2" "${version}"
      return
      ;;
    -*) die "unknown option '$1' (see $0 --help)" ;;
  esac

  local -a components=("$@")
  ((${#components[@]})) || components=("${COMPONENTS[@]}")
  local c
  for c in "${components[@]}"; do component_version "${c}" >/dev/null; done

  mkdir -p "${CACHE_DIR}"
  setup_go_env
  for c in "${components[@]}"; do ensure "${c}"; done
}

main "$@"
