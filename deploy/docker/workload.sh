#!/bin/sh
# Demo workloads for the compose mesh (image fedmesh-workload, busybox).
#
#   web PORT                  busybox httpd serving a small page
#   job URL SECONDS           every SECONDS (fractions allowed): fetch URL
#                             and checksum it
#   misbehave URL WARMUP ON OFF
#                             behaves like `job URL 0.5` for WARMUP seconds,
#                             then repeatedly misbehaves for ON seconds
#                             (one CPU burner and four loops opening TCP
#                             connections to its network's gateway, on top
#                             of its benign fetches) and
#                             rests OFF seconds. Prints "attack start" /
#                             "attack stop" lines with Unix times.
#   idle                      sleeps
set -u
mode="${1:-idle}"
[ $# -gt 0 ] && shift

fetch() { timeout 5 wget -q -O - "$1" 2>/dev/null | md5sum >/dev/null; }

case "$mode" in
  web)
    port="${1:-8080}"
    mkdir -p /tmp/www
    i=0
    while [ $i -lt 64 ]; do echo "fedmesh demo line $i" ; i=$((i + 1)); done > /tmp/www/index.html
    echo "web: serving on :$port"
    exec httpd -f -p "$port" -h /tmp/www
    ;;
  job)
    url="$1"; every="${2:-2}"
    echo "job: fetching $url every ${every}s"
    while :; do fetch "$url"; sleep "$every"; done
    ;;
  misbehave)
    url="$1"; warmup="${2:-90}"; on="${3:-45}"; off="${4:-60}"
    gw="$(ip route 2>/dev/null | awk '/^default/ {print $3; exit}')"
    echo "misbehave: benign for ${warmup}s, then ${on}s on / ${off}s off against gateway ${gw:-none}"
    end=$(( $(date +%s) + warmup ))
    while [ "$(date +%s)" -lt "$end" ]; do fetch "$url"; sleep 0.5; done
    while :; do
      echo "attack start $(date +%s)"
      # The benign fetches go on, so the web server sees no change.
      (while :; do fetch "$url"; sleep 0.5; done) &
      pids="$!"
      (while :; do :; done) & pids="$pids $!"
      for k in 1 2 3 4; do
        (while :; do echo x | nc -w 1 "${gw:-127.0.0.1}" 9 >/dev/null 2>&1; done) &
        pids="$pids $!"
      done
      sleep "$on"
      kill $pids 2>/dev/null
      wait 2>/dev/null
      echo "attack stop $(date +%s)"
      end=$(( $(date +%s) + off ))
      while [ "$(date +%s)" -lt "$end" ]; do fetch "$url"; sleep 0.5; done
    done
    ;;
  idle)
    exec sleep 2147483647
    ;;
  *)
    echo "unknown mode $mode (web | job | misbehave | idle)" >&2
    exit 2
    ;;
esac
