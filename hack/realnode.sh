#!/usr/bin/env bash
# A real Kubernetes node for a `kubeloop cluster`: containerd + runc + CNI bridge,
# kubelet and kube-proxy (v1.34.4 from `make toolchain`), as local processes, so that
# pods scheduled to it run as real containers. Works on cgroup v1 hosts without systemd
# and without any container registry: images come from tarballs (`load`).
#
#   hack/realnode.sh up     [--cluster NAME] [--node NAME]   start (or reuse) the node
#   hack/realnode.sh load   FILE.tar|- ...                    import docker-archive/OCI tarballs
#   hack/realnode.sh images                                   (re)build + import pause/busybox
#   hack/realnode.sh dns                                      CoreDNS + kube-dns (also part of up)
#   hack/realnode.sh status                                   what runs, node condition
#   hack/realnode.sh down   [--cluster NAME]                  stop everything, clean the host
#
# The cluster must be running (`kubeloop cluster up --name NAME --nodes 0`) and have been
# started by a kubeloop whose PKI has the `kubelet-client` certificate and the
# 10.96.0.1 serving SAN (devcluster/kubeloop/devcluster/pki.py).
#
# What it changes on the host (all undone by `down`): an address on `lo` (REALNODE_IP,
# the node's InternalIP), a bridge `kl-br0` with the pod network, iptables rules (kube-proxy
# KUBE-*, the kubelet's KUBE-FIREWALL, CNI masquerade/portmap/firewall), a socat relay on
# REALNODE_IP:6443, net.ipv4.ip_forward=1 (not reset), cgroups under
# /sys/fs/cgroup/*/kubepods, /var/log/containers symlinks. Everything else lives under
# $KUBELOOP_CACHE/realnode (default ~/.cache/kubeloop/realnode) and /run/kubeloop-realnode.
#
# Needs root (containers, mounts, iptables). Packages (Debian): containerd runc
# containernetworking-plugins iptables conntrack socat busybox-static openssl; installed
# with apt-get when missing.
#
# Environment: KUBELOOP_CLUSTER (default kubeloop), REALNODE_NAME (default realnode),
# REALNODE_IP (default 10.250.0.1), REALNODE_POD_CIDR (default 10.85.0.0/24, /24 only),
# REALNODE_DNS=0 (skip CoreDNS in `up`), COREDNS_VERSION (default v1.14.7), KUBELOOP_CACHE.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${KUBELOOP_CACHE:-$HOME/.cache/kubeloop}
RN=$CACHE/realnode                 # configs, certs, containerd root, kubelet root, logs
RUN=/run/kubeloop-realnode         # sockets and containerd state (short paths: unix sockets)
SOCK=$RUN/containerd.sock
CLUSTER=${KUBELOOP_CLUSTER:-kubeloop}
NODE=${REALNODE_NAME:-realnode}
NODE_IP=${REALNODE_IP:-10.250.0.1}
POD_CIDR=${REALNODE_POD_CIDR:-10.85.0.0/24}
POD_GW=${POD_CIDR%.*/*}.1
BRIDGE=kl-br0
CNI_NET=kubeloop-realnode
API_PROXY_PORT=6443                # NODE_IP:6443 -> the apiserver's loopback port (socat)
SERVICE_CIDR=10.96.0.0/16          # the cluster's Services (devcluster SERVICE_CIDR)
SVC_GUARD=kubeloop-realnode-unprogrammed-service
SERVICE_IP=10.96.0.1               # the `kubernetes` Service (first IP of SERVICE_CIDR)
DNS_IP=10.96.0.10                  # kubelet's clusterDNS (a kube-dns Service, if any)
COREDNS_VERSION=${COREDNS_VERSION:-v1.14.7}  # built from the Go module proxy (go install)
PAUSE_IMAGE=kubeloop.local/pause:3.10
COREDNS_IMAGE=kubeloop.local/coredns:${COREDNS_VERSION#v}
BUSYBOX_IMAGE=kubeloop.local/busybox:1.35

say() { printf '[realnode] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# ---------------------------------------------------------------- arguments
CMD=${1:-}
[ $# -gt 0 ] && shift
ARGS=()
while [ $# -gt 0 ]; do
  case $1 in
    --cluster) CLUSTER=$2; shift 2 ;;
    --node) NODE=$2; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
CDIR=$CACHE/clusters/$CLUSTER      # the `kubeloop cluster` state dir (pki/, kubeconfig)

K=$("$ROOT/hack/toolchain.sh" --print-dir kubernetes)  # builds nothing
kubectl() { "$K/kubectl" --kubeconfig "$CDIR/kubeconfig" "$@"; }
ctr_() { ctr --address "$SOCK" -n k8s.io "$@"; }

# wait_for SECONDS WHAT COMMAND...: poll COMMAND every 0.2 s until it succeeds or time runs out.
wait_for() {
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { say "timed out after ${secs}s waiting for $what"; return 1; }
    sleep 0.2
  done
}

# write_file FILE: stdin to FILE, replaced only when the content differs. kube-proxy exits
# ("content of the proxy server's configuration file was updated") on any write to its
# config file, even of the same bytes, so a second `up` must leave it untouched.
write_file() {
  local tmp; tmp=$(mktemp "$1.XXXXXX")
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; fi
}

# ---------------------------------------------------------------- processes
# Each daemon runs in its own session (setsid); its pid and start time go to
# $RN/pids/NAME so that `down` stops exactly that process group and nothing else.
start_daemon() {
  local name=$1; shift
  mkdir -p "$RN/pids" "$RN/logs"
  if daemon_alive "$name"; then say "$name already running (pid $(cut -d' ' -f1 "$RN/pids/$name"))"; return; fi
  setsid "$@" >>"$RN/logs/$name.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid $(start_ticks "$pid")" >"$RN/pids/$name"
  say "started $name (pid $pid, log $RN/logs/$name.log)"
}
start_ticks() { awk '{sub(/.*\) /, ""); print $20}' "/proc/$1/stat" 2>/dev/null || echo 0; }
daemon_alive() {
  local f=$RN/pids/$1 pid ticks
  [ -f "$f" ] || return 1
  read -r pid ticks <"$f"
  [ -d "/proc/$pid" ] && [ "$(start_ticks "$pid")" = "$ticks" ]
}
stop_daemon() {
  local name=$1 f=$RN/pids/$1 pid ticks
  [ -f "$f" ] || return 0
  if daemon_alive "$name"; then
    read -r pid ticks <"$f"
    kill -TERM -- "-$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while daemon_alive "$name" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    daemon_alive "$name" && { say "$name ignored SIGTERM: SIGKILL"; kill -KILL -- "-$pid" 2>/dev/null || true; }
    say "stopped $name"
  fi
  rm -f "$f"
}

# ---------------------------------------------------------------- 0. prerequisites
ensure_packages() {
  [ "$(id -u)" = 0 ] || die "needs root (containers, mounts, iptables)"
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v socat >/dev/null || missing+=(socat)
  command -v openssl >/dev/null || missing+=(openssl)
  # The static build (the image has no libc); it replaces Debian's dynamic `busybox`.
  dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (Debian)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  for b in kubelet kube-proxy kubectl; do
    [ -x "$K/$b" ] || die "$K/$b missing: run 'make toolchain' first"
  done
}

ensure_cluster() {
  [ -f "$CDIR/kubeconfig" ] && [ -f "$CDIR/state.json" ] ||
    die "cluster '$CLUSTER' is not there: kubeloop cluster up --name $CLUSTER --nodes 0"
  API_PORT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ports"]["apiserver"])' "$CDIR/state.json")
  wait_for 10 "the apiserver of '$CLUSTER'" kubectl get --raw /readyz ||
    die "cluster '$CLUSTER' does not answer (kubeloop cluster status --name $CLUSTER)"
  [ -f "$CDIR/pki/kubelet-client.crt" ] &&
    openssl x509 -in "$CDIR/pki/apiserver.crt" -noout -ext subjectAltName | grep -q "$SERVICE_IP" ||
    die "cluster '$CLUSTER' was started by an older kubeloop (no kubelet-client cert / $SERVICE_IP SAN): restart it"
}

# ---------------------------------------------------------------- 1. host network
host_network() {
  # The node's InternalIP lives on lo: a host address that is not loopback (Endpoints may
  # not hold 127.0.0.0/8) and that pods reach through their default route. (Dummy
  # interfaces are not available on every kernel: `ip link add type dummy` fails here.)
  ip -4 addr show dev lo | grep -q " $NODE_IP/" || ip addr add "$NODE_IP/32" dev lo
  sysctl -qw net.ipv4.ip_forward=1
  # Bridged pod traffic must pass iptables for Service DNAT (br_netfilter; built in here).
  if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
    sysctl -qw net.bridge.bridge-nf-call-iptables=1
  else
    say "warning: /proc/sys/net/bridge missing (br_netfilter): pod->Service->same-node pod may fail"
  fi
  # A ClusterIP that kube-proxy has not programmed yet (a Service created a moment ago)
  # must not leave the machine through the default route: refuse it. Programmed ones are
  # rewritten to a pod address (DNAT) before these filter chains see them.
  local chain
  for chain in FORWARD OUTPUT; do
    iptables -C "$chain" -d "$SERVICE_CIDR" -m comment --comment "$SVC_GUARD" -j REJECT 2>/dev/null ||
      iptables -I "$chain" 1 -d "$SERVICE_CIDR" -m comment --comment "$SVC_GUARD" -j REJECT
  done
}

# ---------------------------------------------------------------- 2. containerd
containerd_config() {
  mkdir -p "$RN/containerd/root" "$RN/containerd/opt" "$RN/cni/net.d" "$RN/cni/ipam" "$RUN"
  write_file "$RN/containerd/config.toml" <<EOF
# Written by hack/realnode.sh. containerd 1.6 (Debian bookworm), config version 2.
version = 2
root = "$RN/containerd/root"
state = "$RUN/containerd"
[grpc]
  address = "$SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$RN/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  # Never pulled: imported by hack/realnode.sh (images).
  sandbox_image = "$PAUSE_IMAGE"
  # Pod network namespaces under our state dir, not /run/netns (easy to clean up).
  netns_mounts_under_state_dir = true
  # Root here lacks CAP_SYS_RESOURCE (a sandboxed VM): lowering oom_score_adj below our own
  # fails ("nsexec: failed to update /proc/self/oom_score_adj: Permission denied" -> runc
  # "can't get final child's PID from pipe: EOF"). Clamp to containerd's own score instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # cgroup v1 without systemd as PID 1: the cgroupfs driver (kubelet: cgroupDriver cgroupfs).
        SystemdCgroup = false
        # runc's state beside ours (the default is /run/containerd/runc).
        Root = "$RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RN/cni/net.d"
EOF
  # bridge + host-local IPAM (its own data dir) + portmap (hostPort) + firewall; containerd
  # adds the loopback plugin itself. ipMasq: pods reach beyond the host via SNAT. firewall:
  # ACCEPTs each pod's traffic in FORWARD (CNI-FORWARD), which dockerd sets to DROP.
  write_file "$RN/cni/net.d/10-$CNI_NET.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NET",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$RN/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GW"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "firewall", "backend": "iptables"}
  ]
}
EOF
}

start_containerd() {
  containerd_config
  local t0=$SECONDS
  start_daemon containerd containerd --config "$RN/containerd/config.toml"
  wait_for 30 "containerd ($SOCK)" ctr --address "$SOCK" version || { tail -20 "$RN/logs/containerd.log" >&2; exit 1; }
  say "containerd answers after $((SECONDS - t0))s"
}

# ---------------------------------------------------------------- 3. images
# make_image REF ROOTFS OUT.tar ENTRYPOINT_JSON [CMD_JSON]: a one-layer docker-archive
# (what `docker save` writes), reproducible (sorted, mtime 0, root-owned).
make_image() {
  local ref=$1 rootfs=$2 out=$3 entry=$4 cmd=${5:-null} work diff cfg
  work=$(mktemp -d)
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -cf "$work/layer.tar" .
  diff=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
  mkdir "$work/$diff" && mv "$work/layer.tar" "$work/$diff/layer.tar"
  printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":%s,"Cmd":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$entry" "$cmd" "$diff" >"$work/config.json"
  cfg=$(sha256sum "$work/config.json" | cut -d' ' -f1)
  mv "$work/config.json" "$work/$cfg.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' "$cfg" "$ref" "$diff" >"$work/manifest.json"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work" -cf "$out.tmp" .
  mv "$out.tmp" "$out"
  rm -rf "$work"
}

build_images() {
  local dir=$RN/images work
  mkdir -p "$dir"
  if [ ! -f "$dir/pause.tar" ]; then
    # The pod sandbox process: holds the namespaces, reaps zombies, exits on SIGTERM.
    work=$(mktemp -d)
    mkdir -p "$work/src" "$work/rootfs"
    cat >"$work/src/main.go" <<'EOF'
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			if pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}
EOF
    printf 'module kubeloop.local/pause\n\ngo 1.22\n' >"$work/src/go.mod"
    (cd "$work/src" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-trimpath \
      GOCACHE=${GOCACHE:-$CACHE/go/build} go build -ldflags='-s -w' -o "$work/rootfs/pause" .)
    make_image "$PAUSE_IMAGE" "$work/rootfs" "$dir/pause.tar" '["/pause"]'
    rm -rf "$work"
    say "built $PAUSE_IMAGE ($dir/pause.tar)"
  fi
  if [ ! -f "$dir/busybox.tar" ]; then
    # A shell image for tests and debugging: Debian's static busybox with every applet.
    work=$(mktemp -d)
    mkdir -p "$work/bin" "$work/etc" "$work/tmp" && chmod 1777 "$work/tmp"
    cp /bin/busybox "$work/bin/busybox"
    for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$work/bin/$a"; done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$work/etc/passwd"
    echo 'root:x:0:' >"$work/etc/group"
    make_image "$BUSYBOX_IMAGE" "$work" "$dir/busybox.tar" null '["sh"]'
    rm -rf "$work"
    say "built $BUSYBOX_IMAGE ($dir/busybox.tar)"
  fi
  load_images "$dir/pause.tar" "$dir/busybox.tar"
}

# load_images FILE...|-: import into the k8s.io namespace (the one the CRI plugin uses).
# `docker save IMG | hack/realnode.sh load -` works the same way.
load_images() {
  local f
  for f in "$@"; do
    if [ "$f" = - ]; then ctr_ images import --all-platforms -; else ctr_ images import --all-platforms "$f"; fi
  done
}

# ---------------------------------------------------------------- 4. certificates
# issue NAME SUBJECT EXT: an ECDSA P-256 key + certificate signed by the cluster's CA.
issue() {
  local name=$1 subj=$2 ext=$3 d=$RN/pki
  mkdir -p "$d"
  openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl pkcs8 -topk8 -nocrypt -out "$d/$name.key"
  chmod 600 "$d/$name.key"
  openssl req -new -key "$d/$name.key" -subj "$subj" -out "$d/$name.csr"
  printf '%s\n' "$ext" >"$d/$name.ext"
  openssl x509 -req -in "$d/$name.csr" -CA "$CDIR/pki/ca.crt" -CAkey "$CDIR/pki/ca.key" \
    -CAcreateserial -CAserial "$d/ca.srl" -days 365 -sha256 -extfile "$d/$name.ext" \
    -out "$d/$name.crt" 2>/dev/null
  rm -f "$d/$name.csr" "$d/$name.ext"
}

# kubeconfig NAME: $RN/NAME.kubeconfig for the client certificate NAME.
kubeconfig() {
  local f=$RN/$1.kubeconfig
  rm -f "$f"
  "$K/kubectl" config --kubeconfig "$f" set-cluster local --server "https://127.0.0.1:$API_PORT" \
    --certificate-authority "$CDIR/pki/ca.crt" --embed-certs >/dev/null
  "$K/kubectl" config --kubeconfig "$f" set-credentials "$1" --client-certificate "$RN/pki/$1.crt" \
    --client-key "$RN/pki/$1.key" --embed-certs >/dev/null
  "$K/kubectl" config --kubeconfig "$f" set-context local --cluster local --user "$1" >/dev/null
  "$K/kubectl" config --kubeconfig "$f" use-context local >/dev/null
  chmod 600 "$f"
}

certificates() {
  # Kept while they are from the current cluster's CA (a new `cluster up` makes a new CA).
  if [ -f "$RN/kubelet.kubeconfig" ] && [ -f "$RN/kube-proxy.kubeconfig" ] &&
    grep -q "127.0.0.1:$API_PORT\$" "$RN/kubelet.kubeconfig" &&
    openssl verify -CAfile "$CDIR/pki/ca.crt" "$RN/pki/kubelet.crt" "$RN/pki/kube-proxy.crt" \
      "$RN/pki/kubelet-serving.crt" >/dev/null 2>&1; then
    return
  fi
  if daemon_alive kubelet || daemon_alive kube-proxy; then
    die "the node's certificates are from another cluster: hack/realnode.sh down first"
  fi
  rm -rf "$RN/pki"
  local client='basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth'
  # The Node authorizer is not enabled (RBAC only): the node's rights come from the
  # system:node ClusterRole bound to the group system:nodes below.
  issue kubelet "/O=system:nodes/CN=system:node:$NODE" "$client"
  issue kube-proxy "/CN=system:kube-proxy" "$client"   # bound to system:node-proxier by default
  issue kubelet-serving "/CN=$NODE" 'basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:'"$NODE"',IP:'"$NODE_IP"',IP:127.0.0.1'
  kubeconfig kubelet
  kubeconfig kube-proxy
}

# ---------------------------------------------------------------- 5. cluster objects
cluster_objects() {
  kubectl create clusterrolebinding kubeloop-realnode-system-nodes --clusterrole=system:node \
    --group=system:nodes --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  # Pods reach the API server as https://10.96.0.1:443 (the `kubernetes` Service). The
  # apiserver listens on loopback only and runs with --endpoint-reconciler-type=none, so:
  # a TCP relay NODE_IP:6443 -> 127.0.0.1:API_PORT (TLS passes through; the serving cert has
  # the 10.96.0.1 SAN), and the Service's endpoints written here, pointing at the relay.
  if daemon_alive apiserver-relay &&
    ! tr '\0' ' ' <"/proc/$(cut -d' ' -f1 "$RN/pids/apiserver-relay")/cmdline" | grep -q "TCP:127.0.0.1:$API_PORT "; then
    stop_daemon apiserver-relay   # relaying to an earlier cluster's port
  fi
  start_daemon apiserver-relay socat "TCP-LISTEN:$API_PROXY_PORT,bind=$NODE_IP,reuseaddr,fork" \
    "TCP:127.0.0.1:$API_PORT"
  # (An EndpointSlice, which kube-proxy reads; v1 Endpoints are deprecated since 1.33.)
  kubectl apply -f - >/dev/null <<EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes-realnode
  namespace: default
  labels:
    kubernetes.io/service-name: kubernetes
    endpointslice.kubernetes.io/managed-by: kubeloop-realnode
addressType: IPv4
endpoints: [{addresses: ["$NODE_IP"], conditions: {ready: true}}]
ports: [{name: https, port: $API_PROXY_PORT, protocol: TCP}]
EOF
}

# ---------------------------------------------------------------- 6. kubelet
kubelet_config() {
  mkdir -p "$RN/kubelet" "$RN/pod-logs"
  # Pods get a resolv.conf pointing at clusterDNS; the host's is only used for dnsPolicy Default.
  write_file "$RN/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 host (1.34 still allows it when asked; 1.35 refuses by default).
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
containerRuntimeEndpoint: unix://$SOCK
imageServiceEndpoint: unix://$SOCK
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $RN/pki/kubelet-serving.crt
tlsPrivateKeyFile: $RN/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $CDIR/pki/ca.crt}
authorization:
  mode: Webhook
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
podLogsDir: $RN/pod-logs
failSwapOn: false
# No CAP_SYS_RESOURCE here: -999 (the default) cannot be set; 0 is what we have.
oomScoreAdj: 0
protectKernelDefaults: false
serializeImagePulls: false
# No registry: images are imported, never pulled; keep them (GC never runs at 100%).
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# Small/shared dev disks: evict only when really out of space (these replace the defaults).
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
maxPods: 110
rotateCertificates: false
serverTLSBootstrap: false
registerNode: true
nodeStatusReportFrequency: 1m
# ConfigMap and Secret volumes are refreshed on each pod sync: 10s instead of 1m, so that a
# canary's new weight (the routing ConfigMap) reaches the stable pods within seconds.
syncFrequency: 10s
EOF
}

start_kubelet() {
  kubelet_config
  local t0=$SECONDS
  start_daemon kubelet "$K/kubelet" --config="$RN/kubelet-config.yaml" \
    --kubeconfig="$RN/kubelet.kubeconfig" --root-dir="$RN/kubelet" --cert-dir="$RN/kubelet/pki" \
    --hostname-override="$NODE" --node-ip="$NODE_IP" --v=1
  node_ready() {
    daemon_alive kubelet || { say "kubelet exited:"; tail -30 "$RN/logs/kubelet.log" >&2; exit 1; }
    [ "$(kubectl get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
  }
  wait_for 120 "node $NODE Ready" node_ready || { tail -30 "$RN/logs/kubelet.log" >&2; exit 1; }
  say "node $NODE Ready after $((SECONDS - t0))s"
}

# ---------------------------------------------------------------- 7. kube-proxy
start_kube_proxy() {
  write_file "$RN/kube-proxy-config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $RN/kube-proxy.kubeconfig}
hostnameOverride: $NODE
mode: iptables
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# NodePorts only on the node's own address, not on every host interface.
nodePortAddresses: [$NODE_IP/32]
iptables: {localhostNodePorts: false}
# Leave the host's conntrack sysctls alone (0 = do not set).
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
oomScoreAdj: 0
EOF
  start_daemon kube-proxy "$K/kube-proxy" --config="$RN/kube-proxy-config.yaml" --v=1
  wait_for 60 "kube-proxy's Service rules" iptables -t nat -S KUBE-SERVICES ||
    { tail -30 "$RN/logs/kube-proxy.log" >&2; exit 1; }
  say "kube-proxy programs iptables"
}

# ---------------------------------------------------------------- 8. cluster DNS
# CoreDNS as a Deployment behind the kube-dns Service (10.96.0.10, the kubelet's
# clusterDNS). The binary is built once with `go install` from the Go module proxy
# (CGO off, static) into $CACHE/bin/coredns-VERSION, then wrapped in a one-layer image.
build_coredns() {
  local bin=$CACHE/bin/coredns-$COREDNS_VERSION
  if [ ! -x "$bin/coredns" ]; then
    say "building CoreDNS $COREDNS_VERSION with go install (cold: minutes)"
    mkdir -p "$bin"
    (export GOTOOLCHAIN=local GOMODCACHE=${GOMODCACHE:-$CACHE/go/mod} GOCACHE=${GOCACHE:-$CACHE/go/build} \
      CGO_ENABLED=0 GOBIN=$bin GOFLAGS=-trimpath
     go install -ldflags='-s -w' "github.com/coredns/coredns@$COREDNS_VERSION")
  fi
  if [ ! -f "$RN/images/coredns-$COREDNS_VERSION.tar" ]; then
    local work; work=$(mktemp -d)
    cp "$bin/coredns" "$work/coredns"
    make_image "$COREDNS_IMAGE" "$work" "$RN/images/coredns-$COREDNS_VERSION.tar" '["/coredns"]'
    rm -rf "$work"
  fi
  load_images "$RN/images/coredns-$COREDNS_VERSION.tar"
}

cluster_dns() {
  build_coredns
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: kubeloop-realnode-coredns}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: kubeloop-realnode-coredns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: kubeloop-realnode-coredns}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 30
        }
        forward . /etc/resolv.conf
        cache 30
        loop
        reload
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default              # the host's resolver upstream, not itself
      priorityClassName: system-cluster-critical
      containers:
      - name: coredns
        image: $COREDNS_IMAGE
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
        livenessProbe: {httpGet: {path: /health, port: 8080}, periodSeconds: 10}
        resources: {requests: {cpu: 50m, memory: 32Mi}, limits: {memory: 128Mi}}
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $DNS_IP
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
EOF
  local t0=$SECONDS
  kubectl -n kube-system rollout status deployment/coredns --timeout=120s >/dev/null ||
    { kubectl -n kube-system describe pods -l k8s-app=kube-dns | tail -20 >&2; exit 1; }
  say "cluster DNS ($DNS_IP, CoreDNS $COREDNS_VERSION) ready after $((SECONDS - t0))s"
}

# ---------------------------------------------------------------- down
cleanup_host() {
  # Containers first: kill every task in k8s.io, delete tasks and containers.
  if ctr --address "$SOCK" version >/dev/null 2>&1; then
    local c
    for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s KILL "$c" >/dev/null 2>&1 || true; done
    sleep 0.5
    for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$c" >/dev/null 2>&1 || true; done
    for c in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers rm "$c" >/dev/null 2>&1 || true; done
  fi
  stop_daemon containerd
  # Shims outlive containerd; stop those serving our state dir (and their containers' groups).
  local p
  for p in /proc/[0-9]*; do
    if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q -- "containerd-shim-runc-v2 .*-address $SOCK "; then
      kill -KILL "${p#/proc/}" 2>/dev/null || true
    fi
  done
  # Mounts under our dirs (kubelet volumes, container rootfs, netns), deepest first.
  local m
  for m in $(awk -v a="$RN" -v b="$RUN" '$2 ~ "^"a || $2 ~ "^"b {print $2}' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  # kube-proxy's rules, then CNI's (bridge masquerade and portmap chains carry our net name).
  [ -x "$K/kube-proxy" ] && "$K/kube-proxy" --cleanup >/dev/null 2>&1 || true
  local rule chain
  iptables -t nat -S POSTROUTING 2>/dev/null | grep -F "name: \"$CNI_NET\"" | sed 's/^-A/-D/' |
    while read -r rule; do eval "iptables -t nat $rule" || true; done || true
  for chain in $(iptables -t nat -S 2>/dev/null | awk '/^-N CNI-/ {print $2}'); do
    if iptables -t nat -S "$chain" | grep -qF "name: \"$CNI_NET\""; then
      iptables -t nat -F "$chain" && iptables -t nat -X "$chain" 2>/dev/null || true
    fi
  done
  # The kubelet's own chains (kube-proxy --cleanup leaves them): canaries, the
  # KUBE-FIREWALL localnet guard, the KUBE-IPTABLES-HINT marker.
  local t ipt
  for ipt in iptables ip6tables; do
    for t in mangle nat filter; do "$ipt" -t "$t" -X KUBE-KUBELET-CANARY 2>/dev/null || true; done
    "$ipt" -t filter -D INPUT -j KUBE-FIREWALL 2>/dev/null || true
    "$ipt" -t filter -D OUTPUT -j KUBE-FIREWALL 2>/dev/null || true
    "$ipt" -t filter -F KUBE-FIREWALL 2>/dev/null || true
    "$ipt" -t filter -X KUBE-FIREWALL 2>/dev/null || true
    "$ipt" -t mangle -X KUBE-IPTABLES-HINT 2>/dev/null || true
  done
  # The firewall plugin's chains (CNI-FORWARD holds per-pod rules; CNI-ADMIN is for users).
  iptables -t filter -D FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD 2>/dev/null || true
  iptables -t filter -F CNI-FORWARD 2>/dev/null || true
  iptables -t filter -X CNI-FORWARD 2>/dev/null || true
  iptables -t filter -F CNI-ADMIN 2>/dev/null || true
  iptables -t filter -X CNI-ADMIN 2>/dev/null || true
  for chain in FORWARD OUTPUT; do
    iptables -D "$chain" -d "$SERVICE_CIDR" -m comment --comment "$SVC_GUARD" -j REJECT 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  ip addr del "$NODE_IP/32" dev lo 2>/dev/null || true
  # Empty pod cgroups (kubelet's cgroupfs layout: /kubepods/...).
  local h
  for h in /sys/fs/cgroup/*/kubepods; do
    [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  find /var/log/containers -maxdepth 1 -type l -lname "$RN/*" -delete 2>/dev/null || true
  rm -rf "$RUN" "$RN/cni/ipam" "$RN/kubelet" "$RN/pod-logs"
  # containerd 1.6 keeps shim sockets in /run/containerd/s whatever its state dir: remove
  # those directories when empty (another containerd may use them).
  rmdir /run/containerd/s /run/containerd/fifo /run/containerd 2>/dev/null || true
}

down() {
  # Let the kubelet tear pods down properly (CNI DEL, unmounts) while the API answers.
  if daemon_alive kubelet && [ -f "$CDIR/kubeconfig" ] && kubectl get node "$NODE" >/dev/null 2>&1; then
    # Cordon first, or controllers put replacements straight back onto this (only) node.
    kubectl cordon "$NODE" >/dev/null 2>&1 || true
    kubectl delete pods -A --field-selector "spec.nodeName=$NODE" --grace-period=2 --wait=false >/dev/null 2>&1 || true
    no_tasks() { [ -z "$(ctr_ tasks ls -q 2>/dev/null)" ]; }
    wait_for 30 "pods on $NODE to stop" no_tasks || true
    kubectl delete node "$NODE" --wait=false >/dev/null 2>&1 || true
  fi
  stop_daemon kube-proxy
  stop_daemon kubelet
  stop_daemon apiserver-relay
  cleanup_host
  rm -f "$RN/cluster"
  say "down (kept: images and containerd content in $RN/containerd/root, $RN/images)"
}

status() {
  local n
  for n in containerd kubelet kube-proxy apiserver-relay; do
    if daemon_alive "$n"; then echo "$n: up (pid $(cut -d' ' -f1 "$RN/pids/$n"))"; else echo "$n: down"; fi
  done
  [ -f "$CDIR/kubeconfig" ] && kubectl get node "$NODE" -o wide 2>/dev/null || true
}

case $CMD in
  up)
    T0=$SECONDS
    ensure_packages
    ensure_cluster
    host_network
    start_containerd
    build_images
    certificates
    cluster_objects
    start_kubelet
    start_kube_proxy
    [ "${REALNODE_DNS:-1}" = 0 ] || cluster_dns
    echo "$CLUSTER" >"$RN/cluster"   # which cluster this node joined (kubeloop cluster down)
    say "node $NODE up in $((SECONDS - T0))s; pods need imagePullPolicy: Never/IfNotPresent"
    ;;
  load) [ ${#ARGS[@]} -gt 0 ] || die "load FILE.tar|- ..."; load_images "${ARGS[@]}" ;;
  dns) ensure_packages; ensure_cluster; cluster_dns ;;
  images) rm -f "$RN/images/pause.tar" "$RN/images/busybox.tar"; build_images ;;
  status) status ;;
  down) down ;;
  *) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d'; exit 2 ;;
esac
