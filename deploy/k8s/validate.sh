#!/usr/bin/env bash
# Renders the fedmesh Kustomize base and every overlay with
# `kubectl kustomize` and validates the output offline against the
# Kubernetes JSON schemas (kubernetes-validate from PyPI, strict mode:
# unknown fields are errors). Fails on any error.
#
#   deploy/k8s/validate.sh [OUT_DIR]     rendered YAML kept in OUT_DIR if given
#
# Environment: FEDMESH_K8S_VERSION (schema version, default 1.32.0),
# KUBECTL (default: kubectl on PATH). kubernetes-validate is installed in a
# virtualenv cached under ${XDG_CACHE_HOME:-~/.cache}/fedmesh/.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
k8s_version="${FEDMESH_K8S_VERSION:-1.32.0}"
kv_version="1.37.0"   # kubernetes-validate release (schemas up to 1.37)
kubectl="${KUBECTL:-kubectl}"

command -v "$kubectl" >/dev/null || {
  echo "error: kubectl not found: install kubectl 1.21+ (https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/) or set KUBECTL" >&2
  exit 1
}
# `labels` and inline `patches` need kustomize v4+ (kubectl 1.21+);
# Debian bookworm's kubernetes-client (1.20, kustomize v2) is too old.
kv="$("$kubectl" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p')"
if [ -z "$kv" ] || [ "$kv" -lt 4 ]; then
  echo "error: $kubectl has kustomize ${kv:+v$kv}${kv:-of unknown version}; v4+ (kubectl 1.21+) is needed" \
    "(https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/)" >&2
  exit 1
fi
command -v python3 >/dev/null || { echo "error: python3 not found" >&2; exit 1; }

cache="${XDG_CACHE_HOME:-$HOME/.cache}/fedmesh"
venv="$cache/kubernetes-validate-$kv_version"
if ! "$venv/bin/kubernetes-validate" --version >/dev/null 2>&1; then
  echo "== installing kubernetes-validate==$kv_version into $venv"
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$kv_version"
fi

out="${1:-}"
if [ -z "$out" ]; then
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out"

# kinds FILE: "Kind/name" per rendered object, sorted.
kinds() {
  python3 - "$1" <<'PY'
import re, sys
docs = open(sys.argv[1]).read().split("\n---\n")
for d in docs:
    k = re.search(r"^kind: (\S+)", d, re.M)
    n = re.search(r"^  name: (\S+)", d, re.M)
    if k and n:
        print(f"{k.group(1)}/{re.sub(r'-[a-z0-9]{10}$', '', n.group(1))}")
PY
}
# expect FILE PRESENT|ABSENT Kind/name...
expect() {
  local file="$1" mode="$2" have; shift 2
  have="$(kinds "$file")"
  for k in "$@"; do
    if printf '%s\n' "$have" | grep -qx "$k"; then
      [ "$mode" = PRESENT ] || { echo "error: $file must not contain $k" >&2; return 1; }
    else
      [ "$mode" = ABSENT ] || { echo "error: $file lacks $k" >&2; return 1; }
    fi
  done
}

fail=0
for dir in "$here/base" "$here"/overlays/*/; do
  dir="${dir%/}"
  name="$(basename "$dir")"
  file="$out/$name.yaml"
  echo "== $name: kubectl kustomize + kubernetes-validate --strict -k $k8s_version"
  if ! "$kubectl" kustomize "$dir" > "$file"; then
    echo "error: kustomize failed for $dir" >&2; fail=1; continue
  fi
  if ! "$venv/bin/kubernetes-validate" --strict --quiet -k "$k8s_version" "$file"; then
    echo "error: $name does not validate against Kubernetes $k8s_version" >&2; fail=1; continue
  fi
  common=(Namespace/fedmesh DaemonSet/fedmesh-node ConfigMap/fedmesh-node-config NetworkPolicy/fedmesh-node)
  coord=(StatefulSet/fedmesh-coordinator Service/fedmesh-coordinator
         PodDisruptionBudget/fedmesh-coordinator NetworkPolicy/fedmesh-coordinator
         ConfigMap/fedmesh-coordinator-config)
  case "$name" in
    edge-cluster)
      expect "$file" PRESENT "${common[@]}" && expect "$file" ABSENT "${coord[@]}" || fail=1 ;;
    coordinator-cluster)
      expect "$file" PRESENT "${common[@]}" "${coord[@]}" Service/fedmesh-coordinator-external || fail=1 ;;
    process-events)
      expect "$file" PRESENT "${common[@]}" "${coord[@]}" || fail=1
      # The node subscribes to the proc connector: host network, NET_ADMIN.
      for want in 'kind = "process"' 'hostNetwork: true' '- NET_ADMIN' '- SYS_PTRACE' '- DAC_READ_SEARCH' \
                  'dnsPolicy: ClusterFirstWithHostNet'; do
        grep -qF -- "$want" "$file" || { echo "error: $file lacks $want" >&2; fail=1; }
      done ;;
    *)
      expect "$file" PRESENT "${common[@]}" "${coord[@]}" || fail=1 ;;
  esac
  echo "   $(kinds "$file" | tr '\n' ' ')"
done
[ "$fail" = 0 ] || { echo "FAIL: Kubernetes manifests" >&2; exit 1; }
echo "Kubernetes manifests OK"
