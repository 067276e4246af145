#!/usr/bin/env bash
# Build the three Kubeloop images (kubeloop-operator, kubeloop-trainer, kubeloop-serving)
# with Docker Engine, also on a machine that reaches no container registry.
#
#   hack/images.sh [operator|trainer|serving ...]     (default: all three)
#
# Steps, each skipped when not needed:
#   1. Docker: install Debian's docker.io when there is no docker, start dockerd in the
#      background when no daemon answers (log: ~/.cache/kubeloop/dockerd.log).
#   2. Base image: BASE_IMAGE (default python:3.11-slim-bookworm) when present or pullable;
#      otherwise a local one, kubeloop-base:bookworm-python3, made once with debootstrap
#      (Debian bookworm minbase + python3 + python3-venv), imported with `docker import`
#      and cached as a tarball under ~/.cache/kubeloop/images/.
#   3. Packages: when a container on that base cannot reach the package index, the
#      wheels of every dependency (and of the build backend) are made on this host into
#      build/images/wheels/ (the host runs the same Python minor and glibc as bookworm),
#      and the builds install from there with --no-index.
#   4. docker build --build-arg COMPONENT=<component> . (the one Dockerfile, at the root)
#      for each image, then a size table.
#
# Environment: BASE_IMAGE, TAG (default: the version in pyproject.toml), PYTHON (host
# Python for the wheels, default python3), DEBIAN_MIRROR (default: the host's apt mirror), OFFLINE=1|0 (force step 3 on/off).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CACHE=${KUBELOOP_CACHE:-$HOME/.cache/kubeloop}
DEFAULT_BASE=python:3.11-slim-bookworm
BASE_IMAGE=${BASE_IMAGE:-$DEFAULT_BASE}
# The tag names what it holds beyond python3: a base made before libgomp1 joined is not reused.
LOCAL_BASE=kubeloop-base:bookworm-python3-gomp
# The Debian mirror this host's apt already uses (deb822 or one-line sources).
host_mirror() {
  { sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null
    sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]*\).*/\2/p' /etc/apt/sources.list 2>/dev/null
  } | grep -v -- '-security' | head -1 || true
}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-$(host_mirror)}
PYTHON=${PYTHON:-python3}
TAG=${TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)}
WHEELS=build/images/wheels
ALL_COMPONENTS=(operator trainer serving)
COMPONENTS=("$@")
[ ${#COMPONENTS[@]} -gt 0 ] || COMPONENTS=("${ALL_COMPONENTS[@]}")

say() { printf '[images] %s\n' "$*" >&2; }
for c in "${COMPONENTS[@]}"; do
  [[ " ${ALL_COMPONENTS[*]} " == *" $c "* ]] || { say "no component $c (${ALL_COMPONENTS[*]})"; exit 2; }
done

# ---------------------------------------------------------------- 1. docker
ensure_docker() {
  if ! command -v docker >/dev/null; then
    say "installing docker.io (Debian)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  fi
  if docker info >/dev/null 2>&1; then return; fi
  command -v dockerd >/dev/null || {
    say "installing docker.io (Debian) for dockerd"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  }
  mkdir -p "$CACHE"
  say "starting dockerd in the background (log: $CACHE/dockerd.log)"
  setsid nohup dockerd >>"$CACHE/dockerd.log" 2>&1 </dev/null &
  local deadline=$((SECONDS + 60))
  until docker info >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      say "dockerd did not answer within 60s; last log lines:"
      tail -20 "$CACHE/dockerd.log" >&2
      exit 1
    fi
    sleep 0.5
  done
}

# ---------------------------------------------------------------- 2. base image
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

make_local_base() {
  local tarball="$CACHE/images/base-bookworm-python3-gomp.tar"
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || {
      say "installing debootstrap (Debian)"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    local root
    root=$(mktemp -d "${TMPDIR:-/tmp}/kubeloop-rootfs.XXXXXX")
    say "debootstrap bookworm (minbase + python3 + python3-venv + libgomp1) from $DEBIAN_MIRROR into $root"
    debootstrap --variant=minbase --include=python3,python3-venv,libgomp1 bookworm "$root" "$DEBIAN_MIRROR" \
      >"$CACHE/debootstrap.log" 2>&1 || {
      tail -20 "$CACHE/debootstrap.log" >&2
      rm -rf "$root"
      exit 1
    }
    # What a container never needs: package lists and caches, docs, man pages, locales.
    rm -rf "${root:?}"/var/lib/apt/lists/* "${root:?}"/var/cache/apt/* "${root:?}"/var/log/* \
      "${root:?}"/usr/share/doc/* "${root:?}"/usr/share/man/* "${root:?}"/usr/share/info/* \
      "${root:?}"/usr/share/locale/* "${root:?}"/tmp/* "${root:?}"/proc/* "${root:?}"/sys/* \
      "${root:?}"/dev/*
    mkdir -p "$CACHE/images"
    tar --numeric-owner -C "$root" -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    rm -rf "$root"
  fi
  say "importing $tarball as $LOCAL_BASE"
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$tarball" "$LOCAL_BASE" >/dev/null
}

ensure_base() {
  if have_image "$BASE_IMAGE"; then return; fi
  say "pulling $BASE_IMAGE"
  if timeout 120 docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then return; fi
  say "cannot pull $BASE_IMAGE (no registry reachable); using $LOCAL_BASE"
  BASE_IMAGE=$LOCAL_BASE
  have_image "$BASE_IMAGE" || make_local_base
}

# ---------------------------------------------------------------- 3. wheels
index_reachable() {
  docker run --rm "$BASE_IMAGE" python3 -c \
    'import urllib.request; urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=10)' \
    >/dev/null 2>&1
}

make_wheels() {
  # Reused while pyproject.toml and constraints.txt are unchanged.
  local stamp
  stamp=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
  if [ -f "$WHEELS/.stamp" ] && [ "$(cat "$WHEELS/.stamp")" = "$stamp" ]; then
    say "wheels in $WHEELS are current"
    return
  fi
  say "making wheels on this host into $WHEELS (every extra's dependencies + hatchling)"
  rm -rf "$WHEELS"
  mkdir -p "$WHEELS"
  "$PYTHON" -m pip wheel --quiet --wheel-dir "$WHEELS" -c constraints.txt '.[operator,serving,trainer,cloud]'
  "$PYTHON" -m pip download --quiet --only-binary=:all: --dest "$WHEELS" 'hatchling>=1.25'
  rm -f "$WHEELS"/kubeloop-*.whl  # the images build the project from the source they copy
  echo "$stamp" >"$WHEELS/.stamp"
}

# ---------------------------------------------------------------- 4. build
main() {
  ensure_docker
  ensure_base
  local offline=${OFFLINE:-}
  if [ -z "$offline" ]; then
    if index_reachable; then offline=0; else offline=1; fi
  fi
  mkdir -p "$WHEELS"
  if [ "$offline" = 1 ]; then
    say "build containers cannot reach the package index: installing from host-made wheels"
    make_wheels
  fi
  # The Docker CLI without the buildx plugin needs the classic builder said explicitly.
  docker buildx version >/dev/null 2>&1 || export DOCKER_BUILDKIT=0
  for c in "${COMPONENTS[@]}"; do
    say "building kubeloop-$c:$TAG on $BASE_IMAGE"
    local t0=$SECONDS
    docker build -t "kubeloop-$c:$TAG" --build-arg "COMPONENT=$c" --build-arg "VERSION=$TAG" \
      --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "PIP_OFFLINE=$offline" . \
      >"build/images/$c.log" 2>&1 || {
      say "docker build of $c failed; the end of build/images/$c.log:"
      tail -30 "build/images/$c.log" >&2
      exit 1
    }
    say "kubeloop-$c:$TAG built in $((SECONDS - t0))s"
  done
  printf '%-28s %10s\n' IMAGE SIZE
  for c in "${COMPONENTS[@]}"; do
    printf '%-28s %10s\n' "kubeloop-$c:$TAG" \
      "$(docker image inspect -f '{{.Size}}' "kubeloop-$c:$TAG" | awk '{printf "%.0f MB", $1/1e6}')"
  done
}

main
