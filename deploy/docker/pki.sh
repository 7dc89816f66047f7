#!/bin/busybox sh
# One-shot PKI job for the compose mesh (image fedmesh-pki).
#
# Creates the mesh CA once in /pki (a volume only this job mounts, so the
# CA key never reaches a running service), issues the coordinator
# certificate and one node certificate per name in PKI_NODES, and copies
# each service only what it needs:
#   /out/coordinator: ca.crt coordinator.crt coordinator.key (uid 10001)
#   /out/<node>:      ca.crt node.crt node.key                (uid 65534)
# Re-running keeps the existing CA and certificates (idempotent).
#
# Environment: PKI_TENANT (default acme), PKI_NODES (node-a node-b node-c),
# PKI_SANS (coordinator localhost 127.0.0.1), PKI_DAYS (365).
set -eu
bb=/bin/busybox
tenant="${PKI_TENANT:-acme}"
nodes="${PKI_NODES:-node-a node-b node-c}"
sans="${PKI_SANS:-coordinator localhost 127.0.0.1}"
days="${PKI_DAYS:-365}"
coord=/usr/local/bin/fedmesh-coordinator

if [ -f /pki/ca.key ]; then
  echo "pki: mesh CA already in /pki, keeping it"
else
  set --
  for s in $sans; do set -- "$@" --san "$s"; done
  "$coord" ca init --dir /pki --days "$days" "$@"
fi
for n in $nodes; do
  if [ -f "/pki/tenants/$tenant/$n.crt" ]; then
    echo "pki: $tenant/$n already issued"
  else
    "$coord" ca issue --dir /pki --tenant "$tenant" --node "$n" --days "$days"
  fi
done

# install SRC DST OWNER MODE
install_file() {
  $bb cp "$1" "$2.tmp"
  $bb chown "$3" "$2.tmp"
  $bb chmod "$4" "$2.tmp"
  $bb mv "$2.tmp" "$2"
}
$bb mkdir -p /out/coordinator
install_file /pki/ca.crt /out/coordinator/ca.crt 10001:10001 0444
install_file /pki/coordinator.crt /out/coordinator/coordinator.crt 10001:10001 0444
install_file /pki/coordinator.key /out/coordinator/coordinator.key 10001:10001 0400
for n in $nodes; do
  [ -d "/out/$n" ] || { echo "pki: no volume mounted at /out/$n" >&2; exit 1; }
  install_file /pki/ca.crt "/out/$n/ca.crt" 65534:65534 0444
  install_file "/pki/tenants/$tenant/$n.crt" "/out/$n/node.crt" 65534:65534 0444
  install_file "/pki/tenants/$tenant/$n.key" "/out/$n/node.key" 65534:65534 0400
done
$bb chmod 0700 /pki
echo "pki: coordinator and $(echo $nodes | $bb wc -w) node identities ready for tenant $tenant"
