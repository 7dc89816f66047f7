#!/usr/bin/env bash
# Builds the real-workload benchmark images from this host's Debian packages.
#
#   bench/workload/images.sh [--tag TAG] [--install-deps]
#
# No image is pulled (there is no registry): every image is FROM scratch. The
# programs come from the host's Debian packages and are copied with the
# shared libraries `ldd` lists (and the loader), the same way
# deploy/build-images.sh builds the fedmesh images. Every image also gets a
# static busybox (shell, nc, wget, tar, ...) and bench/workload/roles.sh.
#
#   fedmesh-wl-redis:TAG     redis-server, redis-cli, redis-benchmark, and a
#                            setuid-root helper (/usr/local/bin/wl-suid, the
#                            misconfiguration the privilege-change attack uses)
#   fedmesh-wl-nginx:TAG     nginx (static site on :8080, runs as uid 101)
#   fedmesh-wl-postgres:TAG  postgres, initdb, pg_ctl, pg_isready, pgbench, psql
#   fedmesh-wl-tools:TAG     wrk (load), nmap, socat, stress-ng (also
#                            copied as `xmrig`: the stand-in miner; Debian has
#                            no xmrig package)
#
# Debian packages needed on the host (--install-deps runs apt-get for the
# missing ones): redis-server redis-tools nginx-light wrk busybox-static
# stress-ng nmap socat postgresql gcc libc6-dev.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
tag=dev
install=0
usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
    --install-deps) install=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

# need: "path-or-command package" pairs; missing ones are installed or reported.
missing=()
check() {
  local what="$1" pkg="$2"
  case "$what" in
    /*) [ -e "$what" ] || missing+=("$pkg") ;;
    *) command -v "$what" >/dev/null 2>&1 || missing+=("$pkg") ;;
  esac
}
check_all() {
  missing=()
  check redis-server redis-server; check redis-benchmark redis-tools
  check nginx nginx-light; check wrk wrk; check stress-ng stress-ng
  check nmap nmap; check socat socat; check cc gcc
  check /usr/lib/x86_64-linux-gnu/libc.a libc6-dev
  [ -n "$(pg_bin)" ] || missing+=(postgresql)
  local bb=""
  for p in /bin/busybox /usr/bin/busybox; do
    if [ -x "$p" ] && ! ldd "$p" >/dev/null 2>&1; then bb="$p"; fi
  done
  [ -n "$bb" ] || missing+=(busybox-static)
  busybox="$bb"
}
check_all
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$install" = 1 ]; then
    echo "== apt-get install ${missing[*]}"
    # Services must not start on the host: only their binaries are used.
    export DEBIAN_FRONTEND=noninteractive RUNLEVEL=1
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    check_all
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    echo "error: missing Debian packages: ${missing[*]}" >&2
    echo "       apt-get install ${missing[*]}   (or run with --install-deps)" >&2
    exit 1
  fi
fi
for tool in docker ldd strip; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found" >&2; exit 1; }
done
pgbin="$(pg_bin)"
pglib="$(dirname "$pgbin")/lib"
pgver="$(basename "$(dirname "$pgbin")")"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# libs ROOT FILE: the shared libraries FILE needs, copied by their path.
libs() {
  local root="$1" file="$2" lib
  for lib in $(ldd "$file" 2>/dev/null | awk '/=> \//{print $3} /^\t\//{print $1}'); do
    [ -e "$root$lib" ] && continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}
# bin ROOT SRC [DEST]: SRC stripped at DEST (default /usr/bin/NAME) + its libraries.
bin() {
  local root="$1" src="$2" dest="${3:-/usr/bin/$(basename "$2")}"
  mkdir -p "$root$(dirname "$dest")"
  strip --strip-all -o "$root$dest" "$src" 2>/dev/null || cp -L "$src" "$root$dest"
  chmod 0755 "$root$dest"
  libs "$root" "$src"
}
# base ROOT: busybox applets in /bin, users, /tmp, the role script.
base() {
  local root="$1" applet
  mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/wl" "$root/usr/bin" "$root/usr/local/bin"
  cp "$busybox" "$root/bin/busybox"
  for applet in $("$busybox" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  chmod 1777 "$root/tmp"
  cat > "$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
postgres:x:70:70:postgres:/var/lib/postgresql:/bin/sh
www:x:101:101:www:/srv/www:/sbin/nologin
redis:x:999:999:redis:/data:/sbin/nologin
wl:x:1000:1000:wl:/tmp:/bin/sh
nobody:x:65534:65534:nobody:/:/sbin/nologin
EOF
  printf 'root:x:0:\npostgres:x:70:\nwww:x:101:\nredis:x:999:\nwl:x:1000:\nnogroup:x:65534:\n' > "$root/etc/group"
  # A shadow file the privilege-change attack reads once it is root.
  printf 'root:*:19700:0:99999:7:::\nredis:!:19700:0:99999:7:::\n' > "$root/etc/shadow"
  chmod 0600 "$root/etc/shadow"
  printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
  cp "$here/roles.sh" "$root/wl/roles.sh"
}

echo "== rootfs"
# redis
r="$work/redis/rootfs"; base "$r"
for b in redis-server redis-cli redis-benchmark; do bin "$r" "$(command -v "$b")"; done
mkdir -p "$r/data"
cc -static -Os -o "$work/wl-suid" "$here/suid.c"
cp "$work/wl-suid" "$r/usr/local/bin/wl-suid"
chmod 4755 "$r/usr/local/bin/wl-suid"

# nginx
r="$work/nginx/rootfs"; base "$r"
bin "$r" "$(command -v nginx)" /usr/sbin/nginx
mkdir -p "$r/etc/nginx" "$r/srv/www/api" "$r/var/lib/nginx" "$r/var/log/nginx"
cp "$here/nginx.conf" "$r/etc/nginx/nginx.conf"
{
  echo "<html><body><h1>fedmesh workload</h1><ul>"
  i=0; while [ $i -lt 200 ]; do echo "<li>item $i</li>"; i=$((i + 1)); done
  echo "</ul></body></html>"
} > "$r/srv/www/index.html"
head -c 65536 /dev/urandom > "$r/srv/www/asset.bin"
echo '{"status":"ok"}' > "$r/srv/www/healthz"
echo '{"items":[1,2,3,4,5,6,7,8]}' > "$r/srv/www/api/items.json"

# postgres
r="$work/postgres/rootfs"; base "$r"
for b in postgres initdb pg_ctl pg_isready pgbench psql; do
  bin "$r" "$pgbin/$b" "/usr/lib/postgresql/$pgver/bin/$b"
done
mkdir -p "$r/usr/lib/postgresql/$pgver/lib" "$r/usr/share/postgresql" "$r/usr/share/zoneinfo/Etc"
for so in "$pglib"/*.so; do
  case "$(basename "$so")" in llvmjit*) continue ;; esac  # JIT (libLLVM, ~100 MB): off
  cp -L "$so" "$r/usr/lib/postgresql/$pgver/lib/"
  libs "$r" "$so"
done
cp -a "/usr/share/postgresql/$pgver" "$r/usr/share/postgresql/"
rm -rf "$r/usr/share/postgresql/$pgver/man"
cp -L /usr/share/zoneinfo/UTC "$r/usr/share/zoneinfo/UTC"
cp -L /usr/share/zoneinfo/UTC "$r/usr/share/zoneinfo/Etc/UTC"
mkdir -p "$r/var/lib/postgresql" "$r/var/run/postgresql"
for b in postgres initdb pg_ctl pg_isready pgbench psql; do
  ln -s "/usr/lib/postgresql/$pgver/bin/$b" "$r/usr/bin/$b"
done

# tools
r="$work/tools/rootfs"; base "$r"
for b in wrk nmap socat stress-ng; do bin "$r" "$(command -v "$b")"; done
bin "$r" "$(command -v stress-ng)" /usr/local/bin/xmrig
mkdir -p "$r/usr/share"
cp -a /usr/share/nmap "$r/usr/share/nmap"
cp "$here/rate.lua" "$r/wl/rate.lua"

echo "== images (uncompressed size)"
for name in redis nginx postgres tools; do
  cp "$here/image.Dockerfile" "$work/$name/Dockerfile"
  # COPY drops the setuid bit: set it in a build step.
  [ "$name" = redis ] && echo 'RUN ["/bin/busybox", "chmod", "4755", "/usr/local/bin/wl-suid"]' >> "$work/$name/Dockerfile"
  out=""
  if ! out="$(docker build --quiet -t "fedmesh-wl-$name:$tag" "$work/$name" 2>&1)"; then
    printf '%s\n' "$out" >&2
    echo "error: docker build fedmesh-wl-$name failed" >&2
    exit 1
  fi
  printf '%-28s %12s bytes\n' "fedmesh-wl-$name:$tag" \
    "$(docker image inspect --format '{{.Size}}' "fedmesh-wl-$name:$tag")"
done
