#!/usr/bin/env bash
# Resident memory of the real fedmesh-node binary watching N containers.
#
# Builds a cgroup v1 tree in the Docker cgroupfs layout
# (<controller>/docker/<64-hex id>, the layout of the node's test fixtures
# and of this CI host) with N containers, plus a /proc stand-in with one
# member process per container (net/dev), and keeps the counters moving
# every second (CPU, memory, I/O, network). Runs the node with
# `[source] kind = "cgroup"` on it (1 s windows; the node bootstraps and
# trains a local model after 256 windows, so training is included) for SECS
# seconds, sampling VmRSS every second, and prints VmRSS (max and last) and
# VmHWM from /proc/<pid>/status, and the node's own window/event counters
# from its /metrics endpoint (needs curl).
#
# Usage: node/scripts/rss-100-containers.sh [path/to/fedmesh-node]
#   (default: $CARGO_TARGET_DIR/release/fedmesh-node, else target/release)
#   N=100 SECS=15 environment overrides.
set -euo pipefail

tgt=${CARGO_TARGET_DIR:-target}
BIN=${1:-$tgt/release/fedmesh-node}
N=${N:-100}
SECS=${SECS:-15}
[ -x "$BIN" ] || { echo "no node binary at $BIN (cargo build --release -p fedmesh-node --bin fedmesh-node)" >&2; exit 1; }

dir=$(mktemp -d)
node_pid=""
bump_pid=""
cleanup() {
  [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null || true
  [ -n "$bump_pid" ] && kill "$bump_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

root=$dir/cgroup
proc=$dir/proc
ids=()
for i in $(seq 1 "$N"); do
  id=$(printf '%08x' "$i" | sha256sum | cut -c1-64)
  ids+=("$id")
  pid=$((20000 + i))
  for ctl in cpu,cpuacct memory pids blkio; do
    mkdir -p "$root/$ctl/docker/$id"
    echo "$pid" > "$root/$ctl/docker/$id/cgroup.procs"
  done
  mkdir -p "$proc/$pid/net"
done

write_counters() { # $1 = tick
  local t=$1 i=0 id pid
  for id in "${ids[@]}"; do
    i=$((i + 1)); pid=$((20000 + i))
    echo $(( (t * (i % 7 + 1)) * 10000000 )) > "$root/cpu,cpuacct/docker/$id/cpuacct.usage"
    printf 'nr_periods %d\nnr_throttled 0\nthrottled_time 0\n' "$t" > "$root/cpu,cpuacct/docker/$id/cpu.stat"
    echo $(( (20 + i % 13) * 1048576 + (t % 5) * 4096 )) > "$root/memory/docker/$id/memory.usage_in_bytes"
    echo $(( 2 + i % 5 )) > "$root/pids/docker/$id/pids.current"
    printf '8:0 Read %d\n8:0 Write %d\n8:0 Total %d\nTotal %d\n' $((t * 4096)) $((t * 8192)) $((t * 12288)) $((t * 12288)) \
      > "$root/blkio/docker/$id/blkio.throttle.io_service_bytes"
    printf 'Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n  eth0: %d %d 0 0 0 0 0 0 %d %d 0 0 0 0 0 0\n' \
      $((t * 150000)) $((t * 120)) $((t * 90000)) $((t * 100)) > "$proc/$pid/net/dev"
  done
}
write_counters 1
( t=2; while :; do sleep 1; write_counters "$t"; t=$((t + 1)); done ) &
bump_pid=$!

port=$((30000 + RANDOM % 20000))
cat > "$dir/node.toml" <<TOML
tenant = "bench"
node = "rss"
data_dir = "$dir/data"
window_ms = 1000
metrics_listen = "127.0.0.1:$port"
[source]
kind = "cgroup"
root = "$root"
proc_root = "$proc"
[alerts]
stdout = false
TOML

FEDMESH_LOG=info NO_COLOR=1 "$BIN" run --config "$dir/node.toml" >/dev/null 2>"$dir/node.log" &
node_pid=$!
max_rss=0
last_rss=0
for _ in $(seq 1 "$SECS"); do
  sleep 1
  if ! kill -0 "$node_pid" 2>/dev/null; then
    echo "node exited early:" >&2; cat "$dir/node.log" >&2; exit 1
  fi
  last_rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$node_pid/status")
  [ "$last_rss" -gt "$max_rss" ] && max_rss=$last_rss
done
hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$node_pid/status")
threads=$(awk '/^Threads:/ {print $2}' "/proc/$node_pid/status")
scraped=$(curl -s "http://127.0.0.1:$port/metrics" | grep -E '^fedmesh_node_(windows|events_ingested)_total' | tr '\n' ' ' || true)
bootstrapped=no
grep -q "local bootstrap model" "$dir/node.log" && bootstrapped=yes
echo "fedmesh-node watching $N containers for $SECS s (1 s windows): VmRSS max ${max_rss} kB ($((max_rss / 1024)) MiB), last ${last_rss} kB, VmHWM ${hwm} kB ($((hwm / 1024)) MiB), threads ${threads}, local model trained: ${bootstrapped}; ${scraped}"
if grep -q " ERROR \| WARN \|panicked" "$dir/node.log"; then
  echo "node log has warnings or errors:" >&2; cat "$dir/node.log" >&2; exit 1
fi
