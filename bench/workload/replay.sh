#!/usr/bin/env bash
# Replays a recorded real-workload run offline and writes its report.
#
#   bench/workload/replay.sh [--run DIR] [--config FILE] [--out DIR] [--node BIN]
#
# --run DIR     a run.sh output directory, or the committed fixture
#               (default bench/workload/fixture): recording.jsonl,
#               node.toml, containers.tsv, attacks.tsv, schedule.tsv, run.env
# --config FILE the node config whose [detector], [rules], ignore list and
#               seed judge the recording (default DIR/node.toml, the
#               recording node's own: the replay then repeats the live alerts)
# --out DIR     where alerts.jsonl, report.md and report.json go
#               (default target/workload/replay)
# --node BIN    the fedmesh-node binary (default: cargo build -p fedmesh-node)
#
# No Docker, no root, about a second: try a threshold or a rule change on a
# real run's telemetry.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
run="$here/fixture"
config=""
out="$repo/target/workload/replay"
node_bin=""
while [ $# -gt 0 ]; do
  case "$1" in
    --run) run="${2:?--run needs a directory}"; shift 2 ;;
    --config) config="${2:?--config needs a file}"; shift 2 ;;
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --node) node_bin="${2:?--node needs a binary}"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
config="${config:-$run/node.toml}"
for f in recording.jsonl containers.tsv attacks.tsv run.env; do
  [ -f "$run/$f" ] || { echo "error: $run/$f not found (is --run a run.sh output directory?)" >&2; exit 1; }
done
[ -f "$config" ] || { echo "error: config $config not found" >&2; exit 1; }
if [ -z "$node_bin" ]; then
  (cd "$repo" && cargo build --locked -q -p fedmesh-node)
  node_bin="${CARGO_TARGET_DIR:-$repo/target}/debug/fedmesh-node"
fi
mkdir -p "$out"
for f in containers.tsv attacks.tsv schedule.tsv run.env; do
  [ -f "$run/$f" ] && cp "$run/$f" "$out/"
done
"$node_bin" replay --config "$config" --recording "$run/recording.jsonl" --alerts "$out/alerts.jsonl"
python3 "$here/report.py" "$out"
