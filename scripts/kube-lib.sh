# shellcheck shell=bash
# What scripts/kube-up and scripts/kube-down share: where sbx's test cluster
# keeps its state, and the steps of bringing it up. Source it after lib.sh.

export SBX_KUBE_NODE="${SBX_KUBE_NODE:-sbx-node}"
export SBX_KUBE_BRIDGE="${SBX_KUBE_BRIDGE:-sbxkube0}"
# A private /24 on a bridge of its own: the node's address and its pods'.
# Nothing routes it off the machine.
export SBX_KUBE_SUBNET="${SBX_KUBE_SUBNET:-10.213.7.0/24}"
export SBX_KUBE_NODE_IP="${SBX_KUBE_NODE_IP:-10.213.7.1}"
export SBX_KUBE_POD_RANGE_START="${SBX_KUBE_POD_RANGE_START:-10.213.7.10}"
# Services get virtual addresses only: there is no kube-proxy to route them.
export SBX_KUBE_SERVICE_RANGE="${SBX_KUBE_SERVICE_RANGE:-10.213.8.0/24}"
export SBX_KUBE_API_PORT="${SBX_KUBE_API_PORT:-16443}"
export SBX_KUBE_ETCD_PORT="${SBX_KUBE_ETCD_PORT:-12379}"
export SBX_KUBE_PAUSE_IMAGE="${SBX_KUBE_PAUSE_IMAGE:-sbx.local/pause:1}"

KUBE_STATE="${SBX_KUBE_STATE:-/var/lib/sbx-kube}"
KUBE_RUN="${SBX_KUBE_RUN:-/run/sbx-kube}"
KUBE_LOGS="${SBX_KUBE_LOGS:-/var/log/sbx-kube}"
KUBE_PKI="$KUBE_STATE/pki"
export SBX_KUBE_CONTAINERD="$KUBE_RUN/containerd.sock"
export SBX_KUBECONFIG="$KUBE_PKI/admin.kubeconfig"
# The components in the order they start; kube-down stops them backwards.
KUBE_COMPONENTS=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet)
# What the kubelet changes and kube-down puts back.
KUBE_SYSCTLS=(kernel/panic kernel/panic_on_oops vm/overcommit_memory vm/panic_on_oom kernel/keys/root_maxkeys kernel/keys/root_maxbytes)

# kube_start NAME PROGRAM ARGS...: runs a component in the background, past
# the end of this script, with its pid in $KUBE_RUN/NAME.pid.
kube_start() {
  local name="$1"
  shift
  setsid nohup "$@" >"$KUBE_LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$KUBE_RUN/$name.pid"
}

# kube_wait WHAT COMMAND...: waits up to 60 s for COMMAND to succeed.
kube_wait() {
  local what="$1"
  shift
  for _ in $(seq 1 300); do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.2
  done
  sbx_die "$what did not answer within 60 s (logs: $KUBE_LOGS)"
}

# kube_etcd: the path of etcd, extracted from Debian's etcd-server .deb.
kube_etcd() {
  local dir=/var/cache/sbx/kube/etcd
  if [[ ! -x "$dir/usr/bin/etcd" ]]; then
    local tmp
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download -qq etcd-server >/dev/null 2>&1) \
      || sbx_die "cannot download Debian's etcd-server package"
    rm -rf "$dir"
    dpkg-deb -x "$tmp"/etcd-server_*.deb "$dir"
    rm -rf "$tmp"
  fi
  echo "$dir/usr/bin/etcd"
}

# kube_cert NAME SUBJECT [SAN]: a key and a certificate signed by the CA.
kube_cert() {
  local name="$1" subject="$2" san="${3:-}"
  openssl req -new -newkey rsa:2048 -nodes -subj "$subject" \
    -keyout "$KUBE_PKI/$name.key" -out "$KUBE_PKI/$name.csr" 2>/dev/null
  local ext="$KUBE_PKI/$name.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=digitalSignature,keyEncipherment"
    if [[ -n "$san" ]]; then
      echo "extendedKeyUsage=serverAuth"
      echo "subjectAltName=$san"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$ext"
  openssl x509 -req -in "$KUBE_PKI/$name.csr" -CA "$KUBE_PKI/ca.crt" -CAkey "$KUBE_PKI/ca.key" \
    -CAcreateserial -days 365 -extfile "$ext" -out "$KUBE_PKI/$name.crt" 2>/dev/null
}

# kube_kubeconfig FILE TOKEN: a kubeconfig for the API server on loopback.
kube_kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: sbx
  cluster:
    server: https://127.0.0.1:$SBX_KUBE_API_PORT
    certificate-authority-data: $(base64 -w0 "$KUBE_PKI/ca.crt")
users:
- name: sbx
  user:
    token: $2
contexts:
- name: sbx
  context: {cluster: sbx, user: sbx, namespace: default}
current-context: sbx
EOF
  chmod 600 "$1"
}

# kube_pki: the CA, the API server's serving certificate, its client
# certificate for the kubelet, the service-account keys, and a token each
# for the admin (sbx, kubectl, the controllers) and for the node.
kube_pki() {
  mkdir -p "$KUBE_PKI"
  chmod 700 "$KUBE_PKI"
  openssl req -x509 -new -newkey rsa:2048 -nodes -days 365 -subj "/CN=sbx-kube-ca" \
    -keyout "$KUBE_PKI/ca.key" -out "$KUBE_PKI/ca.crt" 2>/dev/null
  kube_cert apiserver "/CN=kube-apiserver" "IP:127.0.0.1,IP:$SBX_KUBE_NODE_IP,DNS:localhost,DNS:kubernetes.default.svc"
  kube_cert apiserver-kubelet "/O=system:masters/CN=kube-apiserver-kubelet-client"
  openssl genrsa -out "$KUBE_PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$KUBE_PKI/sa.key" -pubout -out "$KUBE_PKI/sa.pub" 2>/dev/null
  local admin node
  admin="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
  node="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
  {
    echo "$admin,admin,admin,system:masters"
    echo "$node,system:node:$SBX_KUBE_NODE,node,system:nodes"
  } >"$KUBE_PKI/tokens.csv"
  kube_kubeconfig "$KUBE_PKI/admin.kubeconfig" "$admin"
  kube_kubeconfig "$KUBE_PKI/kubelet.kubeconfig" "$node"
}

# kube_archive OUT REF ROOTFS: writes a `docker save` archive of one layer,
# ROOTFS, tagged REF, which `ctr images import` takes.
kube_archive() {
  local out="$1" ref="$2" rootfs="$3" tmp diff config
  tmp="$(mktemp -d)"
  tar --numeric-owner -C "$rootfs" -cf "$tmp/layer.tar" .
  diff="$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)"
  printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/pause"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$diff" >"$tmp/config.json"
  config="$(sha256sum "$tmp/config.json" | cut -d' ' -f1)"
  mv "$tmp/config.json" "$tmp/$config.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["layer.tar"]}]' "$config" "$ref" >"$tmp/manifest.json"
  tar -C "$tmp" -cf "$out" manifest.json "$config.json" layer.tar
  rm -rf "$tmp"
}

kube_ctr() {
  ctr --address "$SBX_KUBE_CONTAINERD" -n k8s.io "$@"
}

# kube_import_pause: the pods' sandbox (pause) image, which no registry
# serves here: a static program that sleeps until it is signalled.
kube_import_pause() {
  if kube_ctr images ls -q | grep -qx "$SBX_KUBE_PAUSE_IMAGE"; then
    return 0
  fi
  local tmp
  tmp="$(mktemp -d)"
  mkdir "$tmp/rootfs"
  cat >"$tmp/pause.c" <<'EOF'
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  signal(SIGINT, stop);
  signal(SIGTERM, stop);
  signal(SIGCHLD, reap);
  for (;;) pause();
}
EOF
  gcc -static -O2 -o "$tmp/rootfs/pause" "$tmp/pause.c"
  kube_archive "$tmp/pause.tar" "$SBX_KUBE_PAUSE_IMAGE" "$tmp/rootfs"
  kube_ctr images import "$tmp/pause.tar" >/dev/null
  rm -rf "$tmp"
}

# kube_import_images: the images sbx's own tests need that sbx does not
# import itself (only the pause image so far: sbx imports its agent's image
# and each sandbox image when --kube-node-containerd names this socket).
kube_import_images() {
  kube_import_pause
}

kube_save_sysctls() {
  local key
  for key in "${KUBE_SYSCTLS[@]}"; do
    if [[ -e "/proc/sys/$key" ]]; then
      echo "$key=$(cat "/proc/sys/$key")"
    fi
  done >"$KUBE_STATE/sysctls.saved"
}
