#!/usr/bin/env bash
# Builds the fedmesh container images from binaries built on this machine.
#
#   deploy/build-images.sh [--profile release|debug] [--from-target DIR] [--tag TAG]
#
# No base image is pulled: every image is FROM scratch. The dynamically
# linked binaries are stripped and copied with the shared libraries `ldd`
# lists (and the loader) into a minimal root filesystem per image.
#
#   fedmesh-coordinator:TAG  coordinator binary, uid 10001, HEALTHCHECK via
#                            `fedmesh-coordinator status --url` (metrics port)
#   fedmesh-node:TAG         node binary + a single static busybox `wget`
#                            for the /healthz HEALTHCHECK
#   fedmesh-pki:TAG          fedmesh-coordinator:TAG + static busybox and
#                            deploy/docker/pki.sh (one-shot CA job)
#   fedmesh-workload:TAG     static busybox (demo workloads)
#
# --from-target DIR reuses binaries already in DIR/<profile>: the CI's
# `cargo test --workspace` builds target/debug/e2e-fedmesh-{node,coordinator}.
# Those are test builds: workspace builds enable the node's `sim` feature
# (synthetic workloads, `evaluate`), which the compose end-to-end test uses.
# Without --from-target the binaries are built with
# `cargo build -p fedmesh-node -p fedmesh-coordinator` (CARGO_TARGET_DIR
# honoured), without `sim`: these are the release images.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
profile=debug
from_target=""
tag=dev

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="${2:?--profile needs release or debug}"; shift 2 ;;
    --from-target) from_target="${2:?--from-target needs a directory}"; shift 2 ;;
    --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$profile" in release|debug) ;; *) echo "--profile must be release or debug" >&2; exit 2 ;; esac

for tool in docker ldd strip; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found" >&2; exit 1; }
done
busybox=""
for p in /bin/busybox /usr/bin/busybox /usr/local/bin/busybox; do
  if [ -x "$p" ] && ! ldd "$p" >/dev/null 2>&1; then busybox="$p"; break; fi
done
[ -n "$busybox" ] || { echo "error: no static busybox (apt-get install busybox-static)" >&2; exit 1; }

# Locate or build the binaries.
if [ -n "$from_target" ]; then
  dir="$from_target/$profile"
  # pick NAME...: the newest executable DIR/NAME (fedmesh-X or e2e-fedmesh-X,
  # the same main.rs built by `cargo build` or by `cargo test --workspace`).
  pick() {
    local best="" n
    for n in "$@"; do
      if [ -x "$dir/$n" ] && { [ -z "$best" ] || [ "$dir/$n" -nt "$best" ]; }; then best="$dir/$n"; fi
    done
    printf '%s' "$best"
  }
  coord_bin="$(pick fedmesh-coordinator e2e-fedmesh-coordinator)"
  node_bin="$(pick fedmesh-node e2e-fedmesh-node)"
  [ -n "$coord_bin" ] && [ -n "$node_bin" ] || {
    echo "error: no coordinator/node binaries in $dir (cargo build -p fedmesh-e2e --bins)" >&2; exit 1; }
else
  target="${CARGO_TARGET_DIR:-$repo/target}"
  flags=(); [ "$profile" = release ] && flags=(--release)
  echo "== cargo build -p fedmesh-node -p fedmesh-coordinator --bins ${flags[*]}"
  (cd "$repo" && cargo build --locked -p fedmesh-node -p fedmesh-coordinator --bins "${flags[@]}")
  coord_bin="$target/$profile/fedmesh-coordinator"
  node_bin="$target/$profile/fedmesh-node"
fi
echo "coordinator binary: $coord_bin"
echo "node binary:        $node_bin"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# rootfs DIR BIN NAME: BIN stripped as DIR/usr/local/bin/NAME plus its libraries.
rootfs() {
  local root="$1" bin="$2" name="$3" lib
  mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp"
  strip --strip-all -o "$root/usr/local/bin/$name" "$bin"
  # Shared libraries by their path (ldd "=> /path" and the loader line).
  for lib in $(ldd "$bin" | awk '/=> \//{print $3} /^\t\//{print $1}'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  # Loader path as the binary's PT_INTERP names it (/lib64 -> /lib/x86_64...).
  printf 'root:x:0:0:root:/:/sbin/nologin\nfedmesh:x:10001:10001:fedmesh:/var/lib/fedmesh:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n' > "$root/etc/passwd"
  printf 'root:x:0:\nfedmesh:x:10001:\nnogroup:x:65534:\n' > "$root/etc/group"
  chmod 1777 "$root/tmp"
}

# dbuild ARGS...: docker build, quiet unless it fails (the legacy builder's
# deprecation notice is noise here: there is no buildx on this machine).
dbuild() {
  local out
  if ! out="$(docker build --quiet "$@" 2>&1)"; then
    printf '%s\n' "$out" >&2
    echo "error: docker build $* failed" >&2
    return 1
  fi
}
build() { # build IMAGE CONTEXT DOCKERFILE
  dbuild -t "$1" -f "$3" "$2"
  local size
  size="$(docker image inspect --format '{{.Size}}' "$1")"
  printf '%-28s %12s bytes\n' "$1" "$size"
}

mkdir -p "$work/coordinator" "$work/node" "$work/pki" "$work/workload"
rootfs "$work/coordinator/rootfs" "$coord_bin" fedmesh-coordinator
mkdir -p "$work/coordinator/data/fedmesh" "$work/coordinator/rootfs/var/lib"
rootfs "$work/node/rootfs" "$node_bin" fedmesh-node
mkdir -p "$work/node/data/fedmesh" "$work/node/rootfs/var/lib"
# busybox dispatches on argv[0]: a copy named wget is just wget.
cp "$busybox" "$work/node/rootfs/usr/local/bin/wget"
cp "$busybox" "$work/pki/busybox"
cp "$here/docker/pki.sh" "$work/pki/pki.sh"
cp "$busybox" "$work/workload/busybox"
cp "$here/docker/workload.sh" "$work/workload/workload.sh"

echo "== images (uncompressed size)"
build "fedmesh-coordinator:$tag" "$work/coordinator" "$here/docker/coordinator.Dockerfile"
build "fedmesh-node:$tag" "$work/node" "$here/docker/node.Dockerfile"
dbuild --build-arg "BASE=fedmesh-coordinator:$tag" -t "fedmesh-pki:$tag" \
  -f "$here/docker/pki.Dockerfile" "$work/pki"
printf '%-28s %12s bytes (shares the coordinator layers)\n' "fedmesh-pki:$tag" \
  "$(docker image inspect --format '{{.Size}}' "fedmesh-pki:$tag")"
build "fedmesh-workload:$tag" "$work/workload" "$here/docker/workload.Dockerfile"
