#!/usr/bin/env bash
# Real-workload benchmark: real services under varying load and real attacks
# in Docker, watched by a real fedmesh-node on this host's cgroup tree.
#
#   bench/workload/run.sh [--duration 20m] [--out DIR] [--warmup 6m]
#                         [--schedule FILE] [--window-ms 10000] [--node BIN]
#                         [--skip-images] [--install-deps] [--tag TAG]
#
# 1. Builds the images (images.sh) and the node (`cargo build -p fedmesh-node`,
#    unless --node BIN).
# 2. Starts the scenario on a private `--internal` Docker network (no route
#    off the host; all traffic stays between the scenario's containers):
#    benign redis + redis-benchmark, nginx + wrk, postgres + pgbench, an idle
#    sidecar (load levels change in phases), attack containers that idle
#    until their attack, and the attack infrastructure (pool, listener, sink).
# 3. Starts fedmesh-node stand-alone (proc connector, cgroup and netns
#    sources on /sys/fs/cgroup and /proc, Docker API for names, local
#    bootstrap model from the warm-up).
# 4. After the warm-up, runs the attacks of the schedule one after another
#    with `docker exec` (its own containers, and inside benign ones) and
#    records their real start and stop times (attacks.tsv, the ground truth).
# 5. Stops everything at --duration, writes report.md / report.json
#    (report.py) into --out. A trap removes every container and the network
#    on any exit; every loop in the containers ends by the run's end.
#
# The default schedule (written to DIR/schedule.tsv): warm-up max(4 min, 30 %
# of the duration), then the six attacks in equal slots, each active for
# 60 % of its slot (at most 90 s), each start shifted by a different
# fraction of a window, and a 60 s benign tail. --schedule FILE takes lines
# "KIND OFFSET_S DURATION_S" (kinds: port_scan reverse_shell
# privilege_escalation exfiltration cryptojacking fork_bomb) instead.
#
# Outputs in DIR: alerts.jsonl (the node's JSON alert lines), recording.jsonl
# (every window's events, for `fedmesh-node replay`), node.log,
# node.toml, containers.tsv, schedule.tsv, attacks.tsv, load.tsv (load
# average and node RSS every 10 s), run.env, logs/ (container logs),
# report.md, report.json.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

duration=20m
out=""
warmup=""
schedule_file=""
window_ms=10000
node_bin=""
skip_images=0
install_deps=()
tag=dev
usage() { sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="${2:?--duration needs a value (e.g. 20m)}"; shift 2 ;;
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --warmup) warmup="${2:?--warmup needs a value (e.g. 6m)}"; shift 2 ;;
    --schedule) schedule_file="${2:?--schedule needs a file}"; shift 2 ;;
    --window-ms) window_ms="${2:?--window-ms needs a value}"; shift 2 ;;
    --node) node_bin="${2:?--node needs a binary}"; shift 2 ;;
    --skip-images) skip_images=1; shift ;;
    --install-deps) install_deps=(--install-deps); shift ;;
    --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

# secs 90 | 90s | 20m | 1h -> seconds
secs() {
  case "$1" in
    *h) echo $(( ${1%h} * 3600 )) ;;
    *m) echo $(( ${1%m} * 60 )) ;;
    *s) echo $(( ${1%s} )) ;;
    *) echo $(( $1 )) ;;
  esac
}
dur_s="$(secs "$duration")"
[ "$dur_s" -ge 300 ] && [ "$dur_s" -le 14400 ] || { echo "error: --duration must be 5m..4h" >&2; exit 2; }
[ "$window_ms" -ge 1000 ] && [ "$window_ms" -le 60000 ] || { echo "error: --window-ms must be 1000..60000" >&2; exit 2; }
if [ -n "$warmup" ]; then warm_s="$(secs "$warmup")"; else warm_s=$(( dur_s * 3 / 10 )); [ "$warm_s" -lt 240 ] && warm_s=240; fi
[ -n "$out" ] || out="$repo/target/workload/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out/logs"
out="$(cd "$out" && pwd)"
for tool in docker python3 awk; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "error: no usable Docker engine" >&2; exit 1; }

ms() { date +%s%3N; }
log() { echo "[$(date -u +%H:%M:%S)] $*"; }

# --- attacks: KIND -> container, exec user, role arguments (DUR replaced) ---
attack_spec() {
  case "$1" in
    port_scan) echo "scanner 0:0 scan DUR web cache db sidecar" ;;
    reverse_shell) echo "web 101:101 revshell listener 4444 DUR" ;;
    privilege_escalation) echo "cache 999:999 privesc DUR" ;;
    exfiltration) echo "db 70:70 exfil sink 9000 DUR" ;;
    cryptojacking) echo "miner 0:0 miner pool 3333 DUR" ;;
    fork_bomb) echo "storm 0:0 storm DUR" ;;
    *) return 1 ;;
  esac
}
kinds="port_scan reverse_shell privilege_escalation exfiltration cryptojacking fork_bomb"

# --- schedule: KIND OFFSET_S DURATION_S ---
if [ -n "$schedule_file" ]; then
  grep -v '^[[:space:]]*\(#\|$\)' "$schedule_file" | awk '{print $1 "\t" $2 "\t" $3}' > "$out/schedule.tsv.body"
else
  tail_s=60
  slot=$(( (dur_s - warm_s - tail_s) / 6 ))
  adur=$(( slot * 6 / 10 )); [ "$adur" -gt 90 ] && adur=90
  [ "$adur" -ge 20 ] || { echo "error: --duration $duration leaves $slot s per attack after a ${warm_s} s warm-up (need >= 34 s: a longer --duration or a shorter --warmup, e.g. --duration 7m --warmup 2m)" >&2; exit 2; }
  # Each start shifted by a different fraction of a window (0, .7, .4, .1,
  # .8, .5 of it), so the attacks do not all begin at the same point of the
  # node's windows; the shift stays inside the gap between attacks.
  i=0
  for k in $kinds; do
    jit=$(( (i * 7 * window_ms / 10) % window_ms / 1000 % (slot - adur) ))
    printf '%s\t%s\t%s\n' "$k" $(( warm_s + i * slot + jit )) "$adur"
    i=$((i + 1))
  done > "$out/schedule.tsv.body"
fi
{
  printf 'kind\toffset_s\tduration_s\tcontainer\n'
  while IFS=$'\t' read -r k off d; do
    spec="$(attack_spec "$k")" || { echo "error: unknown attack kind $k in the schedule" >&2; exit 2; }
    [ $(( off + d )) -le "$dur_s" ] || { echo "error: attack $k at $off+$d s ends after the run ($dur_s s)" >&2; exit 2; }
    printf '%s\t%s\t%s\t%s\n' "$k" "$off" "$d" "${spec%% *}"
  done < "$out/schedule.tsv.body"
} > "$out/schedule.tsv"
rm -f "$out/schedule.tsv.body"

# --- build ---
if [ "$skip_images" = 0 ]; then
  log "building images"
  bash "$here/images.sh" --tag "$tag" "${install_deps[@]}"
fi
if [ -z "$node_bin" ]; then
  log "cargo build -p fedmesh-node"
  (cd "$repo" && cargo build --locked -q -p fedmesh-node)
  node_bin="${CARGO_TARGET_DIR:-$repo/target}/debug/fedmesh-node"
fi
[ -x "$node_bin" ] || { echo "error: no node binary at $node_bin" >&2; exit 1; }

# --- scenario ---
rid="fmw$(date +%s)$$"
node_pid=""
bg_pids=()
cleanup() {
  set +e
  trap - EXIT INT TERM
  for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null; done
  if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
    kill -TERM "$node_pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$node_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$node_pid" 2>/dev/null
  fi
  if [ -s "$out/containers.tsv" ]; then
    tail -n +2 "$out/containers.tsv" | while IFS=$'\t' read -r name _ _ _ _; do
      timeout 30 docker logs "$name" > "$out/logs/$name.log" 2>&1
    done
  fi
  ids="$(docker ps -aq --filter "label=fedmesh-workload=$rid")"
  # shellcheck disable=SC2086
  [ -n "$ids" ] && timeout 120 docker rm -f $ids >/dev/null 2>&1
  timeout 60 docker network rm "$rid" >/dev/null 2>&1
  wait 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t0_s="$(date +%s)"
t0_ms="$(ms)"
end_s=$(( t0_s + dur_s ))
wl_end=$(( end_s + 10 ))
log "run $rid: $dur_s s, warm-up $warm_s s, windows $window_ms ms, out $out"
docker network create --internal --label "fedmesh-workload=$rid" "$rid" >/dev/null

printf 'name\trole\tclass\tid\timage\n' > "$out/containers.tsv"
# start ROLE CLASS IMAGE USER CPUS MEM ARGS...: one long-running container.
# --init: a PID 1 that reaps orphans (without it every busybox `timeout` of an
# attack leaves a zombie that raises the container's pid count for good).
start() {
  local role="$1" class="$2" image="$3" user="$4" cpus="$5" mem="$6" id
  shift 6
  id="$(timeout 120 docker run -d --name "$rid-$role" --hostname "$role" \
    --label "fedmesh-workload=$rid" --label "fedmesh-workload-role=$role" \
    --network "$rid" --network-alias "$role" --user "$user" --init \
    --cpus "$cpus" --memory "$mem" --pids-limit 512 -e "WL_END=$wl_end" \
    "fedmesh-wl-$image:$tag" "$@")"
  printf '%s\t%s\t%s\t%s\t%s\n' "$rid-$role" "$role" "$class" "$id" "fedmesh-wl-$image:$tag" >> "$out/containers.tsv"
}
# benign services and their clients
start cache benign redis 999:999 0.5 256m redis
start web benign nginx 101:101 0.5 128m nginx
start db benign postgres 70:70 0.5 512m postgres
start cache-client benign redis 1000:1000 0.3 128m cache-client cache
start web-load benign tools 1000:1000 0.4 128m web-load http://web:8080/
start db-client benign postgres 70:70 0.3 128m db-client db
start sidecar benign tools 65534:65534 0.1 32m sidecar http://web:8080/healthz
# attack infrastructure
start pool infra tools 0:0 0.2 64m pool 3333
start listener infra tools 0:0 0.2 64m listener 4444
start sink infra tools 0:0 0.3 64m sink 9000
# attack containers: idle until their attack
start miner attack tools 0:0 1.0 128m idle
start scanner attack tools 0:0 0.5 128m idle
start storm attack tools 0:0 0.5 256m idle

# --- node ---
# The bootstrap model trains once the node has seen bootstrap_after_windows
# windows over all containers on the host (other users' included): aim for
# the warm-up minus one minute, so every attack starts after the model.
n_host="$(docker ps -q | wc -l)"
boot_windows=$(( n_host * (warm_s - 60) * 1000 / window_ms ))
[ "$boot_windows" -ge 64 ] || boot_windows=64
mkdir -p "$out/node-data"
cat > "$out/node.toml" <<EOF
# Written by bench/workload/run.sh: a stand-alone node (no coordinator) with
# only its built-in collectors (cgroup counters, the kernel's proc
# connector, network-namespace TCP counters and socket tables), as on a host
# without Falco or Tetragon.
tenant = "workload"
node = "bench-host"
data_dir = "node-data"
window_ms = $window_ms
seed = 7

[[sources]]
kind = "cgroup"
root = "/sys/fs/cgroup"
proc_root = "/proc"

[[sources]]
kind = "process"
proc_root = "/proc"

[[sources]]
kind = "netns"
root = "/sys/fs/cgroup"
proc_root = "/proc"

[detector]
false_alarm_rate = 0.01
min_train_windows = 64
bootstrap_after_windows = $boot_windows
top_features = 3

[docker]
socket = "/var/run/docker.sock"

[alerts]
stdout = true

[record]
path = "recording.jsonl"
EOF
log "$n_host containers on the host: bootstrap after $boot_windows windows"
FEDMESH_LOG=info NO_COLOR=1 "$node_bin" run --config "$out/node.toml" \
  > "$out/alerts.jsonl" 2> "$out/node.log" < /dev/null &
node_pid=$!

# load average and node RSS every 10 s
(
  printf 'ts_ms\tload1\tload5\tnode_rss_kb\n'
  while [ "$(date +%s)" -lt "$end_s" ] && kill -0 "$node_pid" 2>/dev/null; do
    rss="$(awk '/^VmRSS/ {print $2}' "/proc/$node_pid/status" 2>/dev/null || echo 0)"
    read -r l1 l5 _ < /proc/loadavg
    printf '%s\t%s\t%s\t%s\n' "$(ms)" "$l1" "$l5" "${rss:-0}"
    sleep 10
  done
) > "$out/load.tsv" &
bg_pids+=($!)

# --- attacks ---
printf 'kind\tcontainer\tstart_ms\tstop_ms\texit\n' > "$out/attacks.tsv"
run_attack() { # KIND DURATION
  local k="$1" d="$2" spec c user args s e rc
  spec="$(attack_spec "$k")"
  read -r c user args <<< "$spec"
  args="${args//DUR/$d}"
  s="$(ms)"
  log "attack $k in $c for $d s"
  # shellcheck disable=SC2086
  timeout $(( d + 60 )) docker exec --user "$user" "$rid-$c" sh /wl/roles.sh $args \
    > "$out/logs/attack-$k.log" 2>&1 && rc=0 || rc=$?
  e="$(ms)"
  printf '%s\t%s\t%s\t%s\t%s\n' "$k" "$rid-$c" "$s" "$e" "$rc" >> "$out/attacks.tsv"
  log "attack $k done (exit $rc, $(( (e - s) / 1000 )) s)"
}
model_ms=""
wait_until() { # Unix seconds; notes the model's arrival meanwhile
  while [ "$(date +%s)" -lt "$1" ]; do
    kill -0 "$node_pid" 2>/dev/null || { echo "error: the node exited; see $out/node.log" >&2; exit 1; }
    if [ -z "$model_ms" ] && grep -q "local bootstrap model" "$out/node.log" 2>/dev/null; then
      model_ms="$(ms)"
      log "node has its bootstrap model ($(( (model_ms - t0_ms) / 1000 )) s after the start)"
    fi
    sleep 2
  done
}
tail -n +2 "$out/schedule.tsv" | while IFS=$'\t' read -r k off d _; do echo "$k $off $d"; done > "$out/.plan"
while read -r k off d; do
  wait_until $(( t0_s + off ))
  run_attack "$k" "$d" &
  bg_pids+=($!)
done < "$out/.plan"
rm -f "$out/.plan"
wait_until "$end_s"
[ -n "$model_ms" ] || { grep -q "local bootstrap model" "$out/node.log" && model_ms="$(ms)"; } || true
end_ms="$(ms)"

# stop the node first (alerts flushed), then the scenario
kill -TERM "$node_pid" 2>/dev/null || true
for _ in $(seq 1 50); do kill -0 "$node_pid" 2>/dev/null || break; sleep 0.2; done
for p in "${bg_pids[@]}"; do wait "$p" 2>/dev/null || true; done
# The model's time from the node's own log line when it is there.
model_line="$(grep -m1 "local bootstrap model" "$out/node.log" || true)"
cat > "$out/run.env" <<EOF
run_id=$rid
t0_ms=$t0_ms
end_ms=$end_ms
model_seen_ms=${model_ms:-}
window_ms=$window_ms
duration_s=$dur_s
warmup_s=$warm_s
bootstrap_windows=$boot_windows
host_containers_at_start=$n_host
cpus=$(nproc)
kernel=$(uname -r)
docker=$(docker version --format '{{.Server.Version}}' 2>/dev/null || echo unknown)
cgroup=$(docker info --format '{{.CgroupVersion}}/{{.CgroupDriver}}' 2>/dev/null || echo unknown)
node_bin=$node_bin
node_version=$("$node_bin" --version 2>/dev/null || echo unknown)
git_commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
model_log_line=$(printf '%s' "$model_line" | tr -d '\n' | cut -c1-300)
EOF
cleanup
python3 "$here/report.py" "$out"
