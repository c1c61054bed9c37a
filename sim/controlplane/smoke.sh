#!/usr/bin/env bash
# Smoke test of the upstream control plane built by build.py: etcd, a minimal *secure* kube-apiserver
# (TLS serving cert, client-certificate admin, Node+RBAC authorization, service-account keys), then
# kube-scheduler and kube-controller-manager against it. Everything listens on 127.0.0.1 on free ports
# and lives in one temporary folder that is removed on exit. Needs bash, openssl, python3 and kubectl.
#
#   sim/controlplane/smoke.sh            # builds (or reuses) the cached binaries first
#   CONTROLPLANE_BIN=/path/to/bin sim/controlplane/smoke.sh
#   KEEP=1 sim/controlplane/smoke.sh     # keep the folder (certs, kubeconfig, logs) for inspection
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${CONTROLPLANE_BIN:-$(python3 "$here/build.py" "$@")}"
work="$(mktemp -d /tmp/kube-vgpu-controlplane.XXXXXX)"
pids=()

cleanup() {
  local status=$?
  # Stop in reverse start order so each component's store is still there while it shuts down.
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    local pid=${pids[i]} started=$SECONDS
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "stopped pid $pid in $((SECONDS - started))s" >&2
  done
  if [[ $status -ne 0 ]]; then
    for log in "$work"/*.log; do
      [[ -f $log ]] || continue
      echo "----- last lines of $log" >&2
      tail -n 25 "$log" >&2
    done
  fi
  if [[ -n ${KEEP:-} ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
  exit "$status"
}
trap cleanup EXIT

step() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }

# Ask the kernel for free ports: bind to port 0 and read back what it chose.
read -r etcd_client etcd_peer apiserver_port scheduler_port kcm_port < <(python3 - <<'PY'
import socket
sockets = [socket.socket() for _ in range(5)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))
for s in sockets:
    s.close()
PY
)

step "certificates in $work/pki"
pki="$work/pki"
mkdir -p "$pki"
quiet() { "$@" >/dev/null 2>&1; }
quiet openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=kube-vgpu-smoke-ca" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt"
# Serving certificate: the names clients use to reach the apiserver, plus the in-cluster service names.
quiet openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
  -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr"
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' \
  >"$pki/apiserver.ext"
quiet openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
  -days 1 -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt"
# Admin client: RBAC maps the system:masters group to cluster-admin.
quiet openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-vgpu-admin" \
  -keyout "$pki/admin.key" -out "$pki/admin.csr"
printf 'extendedKeyUsage=clientAuth\n' >"$pki/client.ext"
quiet openssl x509 -req -in "$pki/admin.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
  -days 1 -extfile "$pki/client.ext" -out "$pki/admin.crt"
# Service-account token signing pair.
quiet openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key"
quiet openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub"

kubeconfig="$work/admin.kubeconfig"
cat >"$kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: smoke
  cluster:
    server: https://127.0.0.1:${apiserver_port}
    certificate-authority: ${pki}/ca.crt
users:
- name: admin
  user:
    client-certificate: ${pki}/admin.crt
    client-key: ${pki}/admin.key
contexts:
- name: smoke
  context: {cluster: smoke, user: admin}
current-context: smoke
EOF

step "etcd on 127.0.0.1:${etcd_client}"
"$bin/etcd" --name smoke --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:${etcd_client}" \
  --advertise-client-urls "http://127.0.0.1:${etcd_client}" \
  --listen-peer-urls "http://127.0.0.1:${etcd_peer}" \
  --initial-advertise-peer-urls "http://127.0.0.1:${etcd_peer}" \
  --initial-cluster "smoke=http://127.0.0.1:${etcd_peer}" \
  --unsafe-no-fsync --log-level warn >"$work/etcd.log" 2>&1 &
pids+=($!)

step "kube-apiserver on https://127.0.0.1:${apiserver_port}"
# A loopback advertise address is refused by the default (lease) endpoint reconciler; with no pods that
# reach the apiserver through the in-cluster `kubernetes` Service, the no-op reconciler is the honest choice.
"$bin/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:${etcd_client}" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$apiserver_port" \
  --cert-dir "$work/apiserver" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --authorization-mode Node,RBAC \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 \
  --endpoint-reconciler-type none \
  >"$work/kube-apiserver.log" 2>&1 &
pids+=($!)

# Wait until a probe succeeds, failing early if the process behind it died.
wait_for() {
  local what=$1 pid=$2 deadline=$((SECONDS + 90))
  shift 2
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { echo "$what exited" >&2; return 1; }
    ((SECONDS < deadline)) || { echo "$what not ready after 90s" >&2; return 1; }
    sleep 0.5
  done
  step "$what ready"
}
kc() { kubectl --kubeconfig "$kubeconfig" --request-timeout 5s "$@"; }

wait_for kube-apiserver "${pids[1]}" kc get --raw /readyz
echo "readyz: $(kc get --raw /readyz)"
# The release go.mod pins, as build.py stamps it; an unstamped build would say v0.0.0-master.
pinned="$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$here/go.mod")"
served="$(kc get --raw /version | python3 -c 'import json,sys; print(json.load(sys.stdin)["gitVersion"])')"
echo "server version: $served (pinned $pinned)"
[[ $served == "$pinned" ]] || { echo "apiserver reports $served, go.mod pins $pinned" >&2; exit 1; }
kc get namespaces
kc get namespace kube-system default >/dev/null

step "kube-scheduler and kube-controller-manager"
"$bin/kube-scheduler" --kubeconfig "$kubeconfig" \
  --authentication-kubeconfig "$kubeconfig" --authorization-kubeconfig "$kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$scheduler_port" --cert-dir "$work/scheduler" \
  >"$work/kube-scheduler.log" 2>&1 &
pids+=($!)
"$bin/kube-controller-manager" --kubeconfig "$kubeconfig" \
  --authentication-kubeconfig "$kubeconfig" --authorization-kubeconfig "$kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$kcm_port" --cert-dir "$work/controller-manager" \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --use-service-account-credentials \
  >"$work/kube-controller-manager.log" 2>&1 &
pids+=($!)
healthy() { curl -fsk "https://127.0.0.1:$1/healthz"; }
wait_for kube-scheduler "${pids[2]}" healthy "$scheduler_port"
wait_for kube-controller-manager "${pids[3]}" healthy "$kcm_port"
# Each holds its leader-election lease once it is really running its loops.
lease_held() { [[ -n $(kc -n kube-system get lease "$1" -o 'jsonpath={.spec.holderIdentity}') ]]; }
wait_for "kube-scheduler lease" "${pids[2]}" lease_held kube-scheduler
wait_for "kube-controller-manager lease" "${pids[3]}" lease_held kube-controller-manager
# The service-account controller only runs when the controller manager works end to end.
wait_for "default service account" "${pids[3]}" kc -n default get serviceaccount default
kc -n kube-system get leases
step "smoke test passed"
