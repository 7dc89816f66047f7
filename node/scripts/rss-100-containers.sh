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
# With NETNS=1 the node also runs the network-namespace source
# (`[[sources]] kind = "netns"`) on the same tree: every container's process
# gets its own net/snmp (counters moving every second) and a net/tcp table
# of 24 sockets, and the /proc stand-in a host namespace (self, 1).
#
# Usage: node/scripts/rss-100-containers.sh [path/to/fedmesh-node]
#   (default: $CARGO_TARGET_DIR/release/fedmesh-node, else target/release)
#   N=100 SECS=15 NETNS=0 environment overrides.
set -euo pipefail

tgt=${CARGO_TARGET_DIR:-target}
BIN=${1:-$tgt/release/fedmesh-node}
N=${N:-100}
SECS=${SECS:-15}
NETNS=${NETNS:-0}
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
if [ "$NETNS" = 1 ]; then
  mkdir -p "$proc/1/net" "$proc/self/net"
  printf 'Tcp: ActiveOpens PassiveOpens AttemptFails EstabResets InErrs OutRsts\nTcp: 1 1 0 0 0 0\n' > "$proc/1/net/snmp"
  ln "$proc/1/net/snmp" "$proc/self/net/snmp"
  i=0
  for id in "${ids[@]}"; do
    i=$((i + 1)); pid=$((20000 + i))
    {
      echo "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"
      printf '   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 %d 1 0000000000000000 100 0 0 10 0\n' $((i * 100))
      for k in $(seq 1 23); do
        printf '%4d: 030011AC:%04X %02X0100AC:%04X 01 00000000:00000000 00:00000000 00000000     0        0 %d 1 0000000000000000 20 4 30 10 -1\n' \
          "$k" $((40000 + k)) "$k" $((5000 + i % 7)) $((i * 100 + k))
      done
    } > "$proc/$pid/net/tcp"
  done
fi

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
    if [ "$NETNS" = 1 ]; then
      printf 'Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\nTcp: 1 200 120000 -1 %d %d %d 0 23 %d %d 0 0 %d 0\n' \
        $((t * (i % 5 + 1))) $((t * 3)) $((t % 3)) $((t * 400)) $((t * 380)) $((t % 2)) > "$proc/$pid/net/snmp"  # in place: its inode is the namespace's identity
    fi
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
[[sources]]
kind = "cgroup"
root = "$root"
proc_root = "$proc"
$( [ "$NETNS" = 1 ] && printf '[[sources]]\nkind = "netns"\nroot = "%s"\nproc_root = "%s"\n' "$root" "$proc" )
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
# CPU time (user + system) of the node over the run, from /proc/<pid>/stat
# (fields 14 and 15, after the parenthesised command name).
tck=$(getconf CLK_TCK)
cpu_ms=$(sed 's/.*) //' "/proc/$node_pid/stat" | awk -v t="$tck" '{print int(($12 + $13) * 1000 / t)}')
scraped=$(curl -s "http://127.0.0.1:$port/metrics" | grep -E '^fedmesh_node_(windows|events_ingested)_total' | tr '\n' ' ' || true)
bootstrapped=no
grep -q "local bootstrap model" "$dir/node.log" && bootstrapped=yes
echo "fedmesh-node watching $N containers for $SECS s (1 s windows, netns source: $NETNS): VmRSS max ${max_rss} kB ($((max_rss / 1024)) MiB), last ${last_rss} kB, VmHWM ${hwm} kB ($((hwm / 1024)) MiB), threads ${threads}, CPU ${cpu_ms} ms, local model trained: ${bootstrapped}; ${scraped}"
if grep -q " ERROR \| WARN \|panicked" "$dir/node.log"; then
  echo "node log has warnings or errors:" >&2; cat "$dir/node.log" >&2; exit 1
fi
