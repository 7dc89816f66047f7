#!/usr/bin/env bash
# End-to-end test of the compose mesh on this machine's Docker engine.
#
#   deploy/compose/e2e.sh [--no-build]
#
# Builds the images (deploy/build-images.sh --from-target, reusing the
# debug binaries of `cargo test --workspace`; --no-build uses existing
# fedmesh-*:dev images), starts the mesh under a unique project name and
# shows:
#   1. rounds advance (versions in the coordinator's /status);
#   2. killing the coordinator container loses no committed version (the
#      audit chain of the stopped store is verified) and training resumes
#      after `start`;
#   3. the misbehaving container opens an incident on its node (node-a)
#      and no benign workload opens an incident on any node;
#   4. a node cut off its network: rounds go on without it, and it rejoins
#      (connected again, submits updates, installs newer versions).
# Tears everything down (down -v --remove-orphans) on exit, bounded in time,
# also on failure or timeout; on failure dumps every service's logs.
#
# Environment: FEDMESH_E2E_TIMEOUT (seconds, default 360),
# CARGO_TARGET_DIR (binaries; default <repo>/target).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
total="${FEDMESH_E2E_TIMEOUT:-360}"
build=1
[ "${1:-}" = "--no-build" ] && build=0

if docker compose version >/dev/null 2>&1; then
  compose_bin=(docker compose)
elif command -v docker-compose >/dev/null; then
  compose_bin=(docker-compose)
else
  echo "error: neither 'docker compose' nor docker-compose is installed" >&2
  exit 1
fi
for tool in docker curl python3 timeout; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found" >&2; exit 1; }
done
timeout 30 docker info >/dev/null 2>&1 || { echo "error: the Docker engine is not reachable" >&2; exit 1; }

project="fedmesh-e2e-$(date +%s)-$$"
export FEDMESH_ATTACK_WARMUP="${FEDMESH_ATTACK_WARMUP:-120}"
export FEDMESH_ATTACK_ON="${FEDMESH_ATTACK_ON:-150}"
export FEDMESH_ATTACK_OFF="${FEDMESH_ATTACK_OFF:-60}"
# The nodes run as uid 65534 and read the Docker socket for container names.
DOCKER_GID="$(stat -c %g /var/run/docker.sock)"
export DOCKER_GID
start_s=$SECONDS
compose() { timeout 120 "${compose_bin[@]}" -p "$project" -f "$here/docker-compose.yml" "$@"; }
log() { printf '[e2e %4ds] %s\n' "$((SECONDS - start_s))" "$*"; }
fail() { log "FAIL: $*"; exit 1; }

teardown() {
  local rc=$?
  trap - EXIT INT TERM
  # The watchdog's sleep inherits flock's lock descriptor: end it too, or
  # the lock stays held until the sleep runs out.
  if [ -n "${watchdog:-}" ]; then
    pkill -P "$watchdog" 2>/dev/null || true
    kill "$watchdog" 2>/dev/null || true
  fi
  if [ "$rc" -ne 0 ] && [ "${up:-0}" = 1 ]; then
    log "failed (exit $rc): logs of every service follow"
    timeout 60 "${compose_bin[@]}" -p "$project" -f "$here/docker-compose.yml" \
      logs --no-color --tail 150 2>&1 || true
  fi
  if [ "${up:-0}" = 1 ]; then
    log "tearing down $project"
    timeout 120 "${compose_bin[@]}" -p "$project" -f "$here/docker-compose.yml" \
      down -v --remove-orphans -t 5 >/dev/null 2>&1 \
      || log "warning: teardown of $project did not finish cleanly"
  fi
  log "done in $((SECONDS - start_s)) s: $([ "$rc" -eq 0 ] && echo PASS || echo FAIL)"
  exit "$rc"
}
trap teardown EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "timed out after ${total}s"; exit 124' TERM
( sleep "$total" && kill -TERM $$ ) 2>/dev/null &
watchdog=$!

if [ "$build" = 1 ]; then
  log "building images"
  timeout 300 "$here/../build-images.sh" --from-target "${CARGO_TARGET_DIR:-$repo/target}" \
    --tag "${FEDMESH_TAG:-dev}"
fi

declare -A ids=()
# cid SERVICE: container id (cached; `compose ps` is slow).
cid() {
  [ -n "${ids[$1]:-}" ] || ids[$1]="$(compose ps -q "$1")"
  [ -n "${ids[$1]}" ] || fail "no container for service $1"
  printf '%s' "${ids[$1]}"
}
status_url=""
refresh_url() {
  local p
  p="$(compose port coordinator 9464 2>/dev/null | tail -1)"
  status_url="http://${p}"
}
# json EXPR: evaluates EXPR on the acme tenant's /status (t), prints it.
json() {
  curl -fsS --max-time 5 "$status_url/status" 2>/dev/null | python3 -c '
import json, sys
t = next(x for x in json.load(sys.stdin) if x["tenant"] == "acme")
v = eval(sys.argv[1])
print(" ".join(v) if isinstance(v, list) else ("" if v is None else v))' "$1"
}
version() { json 't["version"] or 0' || echo -1; }
connected() { json 't["connected"]' || true; }
# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 2 s.
wait_for() {
  local limit=$1 what=$2; shift 2
  local until=$((SECONDS + limit))
  while ! "$@"; do
    [ "$SECONDS" -lt "$until" ] || fail "$what: not within ${limit}s"
    sleep 2
  done
}
node_log() { docker logs "$(cid "$1")" 2>&1 >/dev/null | sed 's/\x1b\[[0-9;]*m//g'; }
# alerts NODE: the node's incident records, JSON lines (its stdout).
alerts() { docker logs "$(cid "$1")" 2>/dev/null | grep '^{' || true; }
alerts_for() { # alerts_for NODE FULL_ID [SINCE_UNIX_MS [STATE]] -> count of records
  alerts "$1" | python3 -c '
import json, sys
n = 0
for line in sys.stdin:
    try: a = json.loads(line)
    except ValueError: continue
    if (a.get("container") and sys.argv[1].startswith(a["container"])
            and a.get("ts_ms", 0) >= int(sys.argv[2])
            and sys.argv[3] in ("", a.get("state"))):
        n += 1
print(n)' "$2" "${3:-0}" "${4:-}"
}

log "starting $project (${compose_bin[*]})"
up=1
out="$(compose up -d 2>&1)" || { printf '%s\n' "$out"; fail "compose up"; }
for svc in pki coordinator node-a node-b node-c web-a job-a misbehave-a web-b job-b web-c job-c; do
  cid "$svc" >/dev/null   # fill the cache in this shell (not in a $(...) subshell)
done
pki_rc="$(docker inspect --format '{{.State.ExitCode}}' "$(cid pki)")"
[ "$pki_rc" = 0 ] || fail "pki job exited with $pki_rc"
refresh_url
log "coordinator status at $status_url/status"

# 1. Rounds advance.
three_connected() { [ "$(connected | wc -w)" -eq 3 ]; }
wait_for 90 "three nodes connected" three_connected
log "connected: $(connected)"
at_least() { [ "$(version)" -ge "$1" ]; }
wait_for 120 "first committed version" at_least 1
v0="$(version)"
wait_for 90 "two more versions after v$v0" at_least $((v0 + 2))
log "rounds advance: v$v0 -> v$(version)"

# 2. Kill the coordinator: no committed version lost, training resumes.
v_kill="$(version)"
docker kill -s KILL "$(cid coordinator)" >/dev/null
log "coordinator killed (last seen v$v_kill)"
vol="${project}_coordinator-data"
audit="$(timeout 60 docker run --rm --network none -v "$vol:/var/lib/fedmesh" \
  "fedmesh-coordinator:${FEDMESH_TAG:-dev}" audit-verify --data-dir /var/lib/fedmesh 2>&1)" \
  || fail "audit-verify of the killed coordinator's store: $audit"
log "stopped store: $audit"
n_audit="$(printf '%s' "$audit" | sed -n 's/.*OK (\([0-9]*\) versions).*/\1/p')"
# The chain holds v0..vHEAD.
[ -n "$n_audit" ] || fail "audit-verify printed no version count: $audit"
head=$((n_audit - 1))
[ "$head" -ge "$v_kill" ] \
  || fail "audit chain ends at v$head, coordinator had committed v$v_kill"
out="$(compose start coordinator 2>&1)" || { printf '%s\n' "$out"; fail "compose start coordinator"; }
refresh_url
reachable() { [ "$(version)" -ge 0 ]; }
wait_for 60 "coordinator back" reachable
v_back="$(version)"
# Resumed from the chain head (one round may already have committed on top).
{ [ "$v_back" -eq "$head" ] || [ "$v_back" -eq $((head + 1)) ]; } \
  || fail "restarted at v$v_back, the store's chain ended at v$head"
log "coordinator restarted at v$v_back (chain head v$head), status at $status_url"
wait_for 120 "a new version after the restart" at_least $((v_back + 1))
log "training resumed: v$(version)"

# 3. Cut node-c off its network: rounds go on; it rejoins when reconnected.
net="${project}_cluster-c"
nc_id="$(cid node-c)"
docker network disconnect "$net" "$nc_id"
v_cut="$(version)"
log "node-c disconnected from cluster-c at v$v_cut"
gone() { ! connected | grep -qw node-c; }
wait_for 60 "coordinator noticing node-c is gone" gone
v_gone="$(version)"
wait_for 90 "two versions without node-c" at_least $((v_gone + 2))
v_partition="$(version)"
log "rounds go on without node-c: v$v_gone -> v$v_partition (connected: $(connected))"
docker network connect --alias node-c "$net" "$nc_id"
log "node-c reconnected"
back() { connected | grep -qw node-c; }
wait_for 60 "node-c rejoining" back
installed_newer() {
  node_log node-c | sed -n 's/.*installed global model.*version=\([0-9]*\).*/\1/p' \
    | awk -v v="$v_partition" '$1 > v {f=1} END {exit !f}'
}
wait_for 90 "node-c installing a version newer than v$v_partition" installed_newer
log "node-c rejoined: connected ($(connected)), installed a version > v$v_partition"

# 4. The misbehaving container opens an incident on its node; no benign
# workload opens one on any node.
bad="$(cid misbehave-a)"
attack_started() { docker logs "$bad" 2>/dev/null | grep -q '^attack start'; }
wait_for $((FEDMESH_ATTACK_WARMUP + 60)) "misbehave-a attack start" attack_started
attack_ms="$(docker logs "$bad" 2>/dev/null | sed -n 's/^attack start \([0-9]*\)$/\1000/p' | head -1)"
log "misbehave-a ($(printf %.12s "$bad")) started misbehaving"
opened() { [ "$(alerts_for node-a "$bad" "$attack_ms" open)" -gt 0 ]; }
wait_for 60 "node-a opening an incident for misbehave-a" opened
# The incident names the container as Docker knows it (node's [docker] identity).
named="$(alerts node-a | python3 -c '
import json, sys
for line in sys.stdin:
    try: a = json.loads(line)
    except ValueError: continue
    if a.get("container") and sys.argv[1].startswith(a["container"]) and a.get("container_name"):
        print(a["container_name"], a.get("image", "")); break
' "$bad")"
case "$named" in
  *misbehave-a*fedmesh-workload*) log "incident names the container: $named" ;;
  *) fail "node-a's incident for misbehave-a carries no Docker name/image (got: '$named')" ;;
esac
sleep 10
# One snapshot of every node's records, then incidents opened per (node,
# container): before the attack started and since.
snap="$(mktemp -d)"
for n in node-a node-b node-c; do alerts "$n" > "$snap/$n"; done
table="$(python3 - "$snap" "$attack_ms" "misbehave-a=$bad" \
  "web-a=$(cid web-a)" "job-a=$(cid job-a)" "web-b=$(cid web-b)" \
  "job-b=$(cid job-b)" "web-c=$(cid web-c)" "job-c=$(cid job-c)" <<'PY'
import json, os, sys
snap, attack_ms, pairs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for node in ("node-a", "node-b", "node-c"):
    alerts = []
    for line in open(os.path.join(snap, node)):
        try:
            alerts.append(json.loads(line))
        except ValueError:
            pass
    for pair in pairs:
        svc, cid = pair.split("=", 1)
        mine = [a for a in alerts if a.get("container") and cid.startswith(a["container"])
                and a.get("state") == "open"]
        before = sum(1 for a in mine if a.get("ts_ms", 0) < attack_ms)
        print(node, svc, before, len(mine) - before)
PY
)"
rm -rf "$snap"
count() { printf '%s\n' "$table" | awk -v n="$1" -v s="$2" -v c="$3" '$1 == n && $2 == s {print $c}'; }
log "misbehave-a incidents opened since the attack: node-a $(count node-a misbehave-a 4)," \
  "node-b $(count node-b misbehave-a 4), node-c $(count node-c misbehave-a 4)" \
  "(before it: $(count node-a misbehave-a 3), $(count node-b misbehave-a 3), $(count node-c misbehave-a 3))"
alerts node-a | python3 -c '
import json, sys
for line in sys.stdin:
    a = json.loads(line)
    if (sys.argv[2].startswith(a.get("container") or "-") and a["ts_ms"] >= int(sys.argv[1])
            and a.get("state") == "open"):
        print("  incident opened:", line.strip()); break' "$attack_ms" "$bad"
# Benign workloads: no incident at all (every node, every benign container,
# from the mesh's start on).
benign_total=0
while read -r n svc before since; do
  [ "$svc" = misbehave-a ] && continue
  [ $((before + since)) -eq 0 ] || log "benign $svc: $n opened $before incidents before the attack, $since since"
  benign_total=$((benign_total + before + since))
done <<< "$table"
[ "$benign_total" -eq 0 ] || fail "benign workloads opened $benign_total incidents"
log "no benign workload opened an incident on any node"
# fedmesh's own containers are excluded by image ([alerts] ignore).
own=0
for svc in coordinator node-a node-b node-c; do
  c="$(cid "$svc")"
  for n in node-a node-b node-c; do own=$((own + $(alerts_for "$n" "$c"))); done
done
[ "$own" -eq 0 ] || fail "fedmesh's own containers had $own incident records despite [alerts] ignore"
log "no incident record for fedmesh's own containers (ignored by image)"

log "all checks passed (final version v$(version))"
