#!/usr/bin/env bash
# etcd's TLS for deploy/k8s, as two Secret manifests on stdout (nothing is sent anywhere):
#
#   deploy/k8s/etcd-certs.sh | kubectl apply -f -      # once, after `kubectl apply -k deploy/k8s` made
#                                                      # the namespace (etcd and control pods wait for it)
#
#   meshgate-etcd-server-tls  etcd members: serving clients and peers (tls.crt, tls.key, ca.crt)
#   meshgate-etcd-client-tls  control's client certificate for etcd         (tls.crt, tls.key, ca.crt)
#
# A CA of its own (EC P-256, 10 years) signs both certificates (2 years); etcd trusts only that CA
# for clients (--client-cert-auth) and peers (--peer-client-cert-auth). The CA key is not put in
# the cluster: with -o DIR every PEM, the CA key too, stays in DIR (0700), and a later run with the
# same DIR keeps that CA and issues new certificates (rotation: apply, then
# `kubectl -n NAMESPACE rollout restart statefulset/meshgate-etcd deployment/meshgate-control`).
# Without -o the CA key is thrown away; a new CA means restarting every etcd pod at once, since
# members with the old and the new CA refuse each other.
#
# Usage: etcd-certs.sh [-n NAMESPACE] [-d CLUSTER_DOMAIN] [-o DIR]
#   (defaults: meshgate-system, cluster.local, a temporary dir removed at exit). Needs openssl >= 1.1.1.
set -euo pipefail

namespace=meshgate-system
domain=cluster.local
out=""
while getopts "n:d:o:h" opt; do
  case "$opt" in
    n) namespace=$OPTARG ;;
    d) domain=$OPTARG ;;
    o) out=$OPTARG ;;
    *) sed -n '2,19s/^# \{0,1\}//p' "$0" >&2; exit 2 ;;
  esac
done

if [[ -z "$out" ]]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
else
  mkdir -p "$out"
fi
chmod 700 "$out"
umask 077
cd "$out"

ssl() { openssl "$@" 2>/dev/null || { echo "etcd-certs.sh: openssl $1 failed" >&2; exit 1; }; }
newkey() { ssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

if [[ ! -f ca.key || ! -f ca.crt ]]; then
  newkey ca.key
  ssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=meshgate-etcd-ca" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.crt
fi

# name, extended key usage, subjectAltName (empty for a client)
issue() {
  local name=$1 usage=$2 sans=$3
  newkey "$name.key"
  ssl req -new -key "$name.key" -subj "/CN=$name" -out "$name.csr"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [[ -n "$sans" ]] && echo "subjectAltName=$sans"
  } >"$name.ext"
  ssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 730 \
    -extfile "$name.ext" -out "$name.crt"
  rm -f "$name.csr" "$name.ext"
}

# Members serve clients and peers with one certificate and present it to each other as clients.
# Names: each member's peer/advertise name (the headless Service), the client Service, loopback.
svc=svc.$domain
sans="DNS:*.meshgate-etcd.$namespace.svc,DNS:*.meshgate-etcd.$namespace.$svc"
sans+=",DNS:meshgate-etcd-client.$namespace.svc,DNS:meshgate-etcd-client.$namespace.$svc"
sans+=",DNS:meshgate-etcd-client.$namespace,DNS:meshgate-etcd-client,DNS:localhost,IP:127.0.0.1"
issue meshgate-etcd serverAuth,clientAuth "$sans"
issue meshgate-control clientAuth ""

b64() { base64 <"$1" | tr -d '\n'; }
secret() {
  cat <<EOF
---
apiVersion: v1
kind: Secret
type: kubernetes.io/tls
metadata:
  name: $1
  namespace: $namespace
  labels: {app.kubernetes.io/part-of: meshgate, app.kubernetes.io/component: etcd-tls}
data:
  ca.crt: $(b64 ca.crt)
  tls.crt: $(b64 "$2.crt")
  tls.key: $(b64 "$2.key")
EOF
}
secret meshgate-etcd-server-tls meshgate-etcd
secret meshgate-etcd-client-tls meshgate-control
