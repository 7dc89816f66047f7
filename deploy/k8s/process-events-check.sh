#!/usr/bin/env bash
# Checks, against the real Docker engine and kernel, that the privileges
# overlays/process-events gives the node pods are the ones the kernel's
# process events need, and that they suffice:
#
#   1. the node image, run as overlays/process-events runs it (host network
#      and PID namespace, uid 0, every capability dropped but NET_ADMIN,
#      SYS_PTRACE and DAC_READ_SEARCH, read-only root filesystem, no
#      privilege escalation), subscribes to the proc connector, raises the
#      `setuid_root` rule on a container that runs a setuid-root binary as
#      another user, and `reverse_shell` on bind shells running as root and
#      as uid 65534 in their containers;
#   2. the same without the host network, and as uid 65534, cannot
#      subscribe, and the node says so and runs on.
#
#   deploy/k8s/process-events-check.sh
#
# Needs root, Docker, and the images fedmesh-node and fedmesh-workload
# (deploy/build-images.sh; tag FEDMESH_TAG, default dev). Every container it
# starts is removed on exit; every wait is bounded.
set -euo pipefail

tag="${FEDMESH_TAG:-dev}"
node_image="fedmesh-node:$tag"
workload_image="fedmesh-workload:$tag"
here="$(cd "$(dirname "$0")" && pwd)"
for image in "$node_image" "$workload_image"; do
  docker image inspect "$image" >/dev/null 2>&1 || {
    echo "error: image $image not found: build it with deploy/build-images.sh" >&2
    exit 1
  }
done
# The overlay must still ask for what this script runs the node with.
caps=(NET_ADMIN SYS_PTRACE DAC_READ_SEARCH)
caps_yaml="add: [$(printf '"%s", ' "${caps[@]}" | sed 's/, $//')]"
for want in 'hostNetwork: true' 'runAsUser: 0' "$caps_yaml" 'drop: ["ALL"]'; do
  grep -qF -- "$want" "$here/overlays/process-events/kustomization.yaml" || {
    echo "error: overlays/process-events no longer sets $want; update this check" >&2
    exit 1
  }
done

suffix="$$-$(date +%s)"
work="$(mktemp -d)"
names=()
cleanup() {
  for n in ${names[@]+"${names[@]}"}; do docker rm -f "$n" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/node.toml" <<'EOF'
tenant = "check"
node = "process-events"
data_dir = "/data"
window_ms = 1000
[source]
kind = "process"
proc_root = "/host/proc"
[alerts]
stdout = true
EOF
chmod 0755 "$work"
chmod 0644 "$work/node.toml"

# start_node NAME NETWORK USER CAPS...: the node image with the overlay's
# security settings, except for the network, the user and the capabilities.
start_node() {
  local name="$1" network="$2" user="$3"; shift 3
  names+=("$name")
  docker run -d --name "$name" --network "$network" --pid host --user "$user" \
    --cap-drop ALL "$@" --read-only --security-opt no-new-privileges:true \
    --tmpfs /data:mode=1777 -v "$work:/etc/check:ro" -v /proc:/host/proc:ro \
    -e FEDMESH_LOG=info -e NO_COLOR=1 \
    "$node_image" run --config /etc/check/node.toml >/dev/null
}
# expect_log NAME PATTERN SECONDS WHAT: waits (bounded) until the container's
# output matches; otherwise fails with WHAT and the container's output.
expect_log() {
  local i
  for ((i = 0; i < $3 * 4; i++)); do
    # Not `grep -q`: with pipefail, grep quitting early makes `docker logs`
    # die of SIGPIPE and the pipeline fail once the log outgrows a pipe.
    docker logs "$1" 2>&1 | grep -- "$2" >/dev/null && return 0
    sleep 0.25
  done
  echo "FAIL: $4" >&2
  docker logs "$1" >&2 || true
  exit 1
}

cap_flags=()
for c in "${caps[@]}"; do cap_flags+=(--cap-add "$c"); done
echo "== as overlays/process-events runs it: host network, uid 0, ${caps[*]}"
start_node "fedmesh-pe-node-$suffix" host 0 "${cap_flags[@]}"
expect_log "fedmesh-pe-node-$suffix" "watching process events" 20 \
  "the node did not subscribe to the proc connector"
victim="fedmesh-pe-victim-$suffix"
names+=("$victim")
victim_id="$(docker run -d --name "$victim" --user 0 --entrypoint /bin/busybox "$workload_image" sh -c \
  "echo 'root:x:0:0::/:/bin/sh' > /etc/passwd; echo 'u:x:1000:1000::/:/bin/sh' >> /etc/passwd; \
   cp /bin/busybox /suid; chmod 4755 /suid; sleep 1; \
   for i in 1 2 3; do su -s /bin/sh u -c '/suid true'; sleep 1; done; sleep 5")"
expect_log "fedmesh-pe-node-$suffix" "\"container\":\"${victim_id:0:12}.*setuid_root" 30 \
  "no setuid_root incident on ${victim_id:0:12}"
echo "   setuid_root raised on ${victim_id:0:12}"
# Bind shells: busybox nc hands its socket to /bin/sh as stdin; the client
# keeps the connection open a few seconds, as an operator's session does.
for user in 0 65534; do
  shell="fedmesh-pe-shell-$user-$suffix"
  names+=("$shell")
  shell_id="$(docker run -d --name "$shell" --user "$user" --entrypoint /bin/busybox "$workload_image" sh -c \
    "nc -l -p 4444 -e /bin/sh & sleep 2; (echo id; sleep 6) | nc 127.0.0.1 4444; sleep 2")"
  expect_log "fedmesh-pe-node-$suffix" "\"container\":\"${shell_id:0:12}.*reverse_shell" 30 \
    "no reverse_shell incident on ${shell_id:0:12} (shell as uid $user)"
  echo "   reverse_shell raised on ${shell_id:0:12} (shell as uid $user)"
done

echo "== without the host network: the node cannot subscribe, says so, runs on"
start_node "fedmesh-pe-bridge-$suffix" bridge 0 "${cap_flags[@]}"
expect_log "fedmesh-pe-bridge-$suffix" "process source unavailable" 20 \
  "no 'process source unavailable' warning on the bridge network"
echo "== as uid 65534 with the same capabilities: the same"
start_node "fedmesh-pe-user-$suffix" host 65534 "${cap_flags[@]}"
expect_log "fedmesh-pe-user-$suffix" "process source unavailable" 20 \
  "no 'process source unavailable' warning as uid 65534"
sleep 3
for n in "fedmesh-pe-bridge-$suffix" "fedmesh-pe-user-$suffix"; do
  [ "$(docker inspect -f '{{.State.Running}}' "$n")" = true ] || {
    echo "FAIL: $n stopped instead of running on without the source" >&2
    exit 1
  }
done
echo "process events with the overlay's privileges: OK"
