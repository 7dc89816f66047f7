#!/usr/bin/env python3
"""Flower vs fedmesh aggregation: same .npy inputs, same run, results and times side by side.

Usage:
    python3 simulations/scripts/compare_flower.py [--cells 10x1000000,100x100000,100x1000000]
        [--f 10 (capped per cell at (N-3)//4)] [--rules fedavg,median,trimmed_mean,krum,multi_krum,bulyan]
        [--fedmesh target/release/fedmesh-sim] [--reps 3] [--seed 42]
        [--markdown] [--out flower.md]

The script installs what it needs itself: on first use it creates a virtual
environment under $FEDMESH_CACHE (default ~/.cache/fedmesh/flower-venv),
installs flwr==1.42.* and numpy there and re-runs itself inside it. Flower
1.42 pins a recent certifi; if the registry lacks it, the script installs the
newest certifi available and then flwr's dependencies explicitly with
`pip install --no-deps flwr==1.42.*`.

For every cell (N x P) it writes the float32 batch once (.npy). For every
rule it then alternates, `reps` times, Flower's own function from
flwr.server.strategy.aggregate on that batch and `fedmesh-sim aggregate
--json` on the same file (Flower first on even repetitions, fedmesh first on
odd ones), so both see the same machine state. It prints one table: max
|difference| between the two results, whether Krum picked the same update,
the best-of-reps time of each (Flower: the function call alone; fedmesh:
the rule alone as the binary reports it, and its whole process: start,
streamed read, rule, write, exit) and Flower's time over fedmesh's rule
time. The table's header gives the date, the CPU, the core count, the load
average before and after, and the versions, so it can be quoted as it is.
Exit status 1 if any result disagrees beyond tolerance.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

FLWR_SPEC = "flwr==1.42.*"
# flwr 1.42's runtime dependencies, for the --no-deps fallback.
FLWR_DEPS = [
    "numpy>=1.26", "grpcio>=1.70,<2", "grpcio-health-checking>=1.70,<2",
    "protobuf>=5.28,<7", "cryptography>=50,<51", "pycryptodome>=3.18,<4",
    "iterators>=0.0.2,<0.0.3", "typer>=0.13,<0.21", "tomli>=2.0.1,<3",
    "tomli-w>=1,<2", "pathspec>=1.0.4,<2", "prompt-toolkit>=3.0.52,<4",
    "rich>=14,<15", "pyyaml>=6.0.2,<7", "requests>=2.33,<3", "httpx>=0.28.1,<1",
    "click>=8,<9", "packaging>=24,<26",
]


def cache_dir() -> Path:
    base = os.environ.get("FEDMESH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "fedmesh")
    return Path(base)


def ensure_env() -> None:
    """Re-executes inside the cached venv with flwr installed."""
    try:
        import flwr  # noqa: F401
        import numpy  # noqa: F401
        return
    except ImportError:
        pass
    if os.environ.get("FEDMESH_FLOWER_VENV_ACTIVE"):
        sys.exit("error: flwr is still not importable inside the venv; see pip output above")
    env_dir = cache_dir() / "flower-venv"
    py = env_dir / "bin" / "python"
    if not py.exists():
        print(f"creating virtualenv {env_dir}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(env_dir)
    check = subprocess.run([str(py), "-c", "import flwr, numpy"], capture_output=True)
    if check.returncode != 0:
        pip = [str(py), "-m", "pip", "install", "-q"]
        print(f"installing {FLWR_SPEC} into {env_dir}", file=sys.stderr)
        if subprocess.run(pip + [FLWR_SPEC, "numpy"]).returncode != 0:
            print("plain install failed (pinned certifi missing?); installing the "
                  "dependencies explicitly", file=sys.stderr)
            subprocess.run(pip + ["certifi"], check=True)
            subprocess.run(pip + FLWR_DEPS, check=True)
            subprocess.run(pip + ["--no-deps", FLWR_SPEC], check=True)
    os.environ["FEDMESH_FLOWER_VENV_ACTIVE"] = "1"
    os.execv(str(py), [str(py)] + sys.argv)


def main() -> int:
    ensure_env()
    import numpy as np
    from flwr.server.strategy import aggregate as fa
    import flwr

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="100x10000,100x100000",
                    help="comma-separated NxP cells, e.g. 10x1000000,100x100000,100x1000000")
    ap.add_argument("--f", type=int, default=10, help="Byzantine count for krum/bulyan/trim")
    ap.add_argument("--m", type=int, default=0, help="multi_krum m (default n-f-2)")
    ap.add_argument("--out", default=None, help="also write the Markdown table to this file")
    ap.add_argument("--rules", default="fedavg,median,trimmed_mean,krum,multi_krum,bulyan")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--fedmesh", default=None, help="fedmesh-sim binary")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args()

    root = Path(__file__).resolve().parents[2]
    exe = args.fedmesh or os.environ.get("FEDMESH_SIM")
    if exe is None:
        for cand in [root / "target/release/fedmesh-sim", root / "target/debug/fedmesh-sim"]:
            if cand.exists():
                exe = str(cand)
                break
    if exe is None:
        sys.exit("error: no fedmesh-sim binary; build it (cargo build --release -p fedmesh-sim) "
                 "or pass --fedmesh")
    f = args.f
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    cells = []
    for c in args.cells.split(","):
        try:
            cn, cp = c.lower().split("x")
            cells.append((int(cn), int(float(cp))))
        except ValueError:
            sys.exit(f"error: cell {c!r} is not NxP (e.g. 100x100000)")
    def cell_f(n):
        # Bulyan needs N >= 4f + 3; a small cell tolerates fewer.
        return max(0, min(f, (n - 3) // 4))

    def flower(rule, results, n):
        f = cell_f(n)
        m = args.m or (n - f - 2)
        # Trimmed mean: Flower cuts int(beta * n) per side; (f + 0.5)/n gives exactly f.
        beta = (f + 0.5) / n
        if rule == "fedavg":
            return fa.aggregate(results)[0]
        if rule == "median":
            return fa.aggregate_median(results)[0]
        if rule == "trimmed_mean":
            return fa.aggregate_trimmed_avg(results, beta)[0]
        if rule == "krum":
            return fa.aggregate_krum(results, f, 0)[0]
        if rule == "multi_krum":
            return fa.aggregate_krum(results, f, m)[0]
        if rule == "bulyan":
            return fa.aggregate_bulyan(list(results), f, fa.aggregate_krum, to_keep=0)[0]
        raise SystemExit(f"error: no Flower function for rule {rule}")

    def fedmesh_flags(rule, n):
        f = cell_f(n)
        m = args.m or (n - f - 2)
        return {
            "fedavg": [], "median": [], "trimmed_mean": ["--trim", str(f)],
            "krum": ["--f", str(f)], "multi_krum": ["--f", str(f), "--m", str(m)],
            "bulyan": ["--f", str(f)],
        }[rule]

    def load():
        try:
            return float(Path("/proc/loadavg").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return float("nan")

    def cpu_model():
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "unknown CPU"

    import json
    load_before = load()
    print(f"flwr {flwr.__version__}, numpy {np.__version__}, fedmesh {exe}", file=sys.stderr)
    rows = []
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for n, p in cells:
            rng = np.random.default_rng(args.seed)
            x = rng.normal(0.0, 1.0, size=(n, p)).astype("<f4")
            # f outliers, so selection rules have something to reject.
            x[:cell_f(n)] = x[:cell_f(n)] * 10.0 + 3.0
            # Rows in lexicographic order: where Krum scores tie (Bulyan's
            # last steps score with one neighbour, so a mutually nearest
            # pair always ties when f = 1), fedmesh picks the
            # lexicographically smaller update and Flower the first index;
            # on sorted rows the two are the same update.
            x = np.ascontiguousarray(x[np.lexsort(x.T[::-1])])
            inp = Path(tmp) / f"updates_{n}x{p}.npy"
            np.save(inp, np.ascontiguousarray(x))
            results = [([x[i]], 1) for i in range(n)]
            for rule in rules:
                out = Path(tmp) / f"out_{rule}_{n}x{p}.npy"
                cmd = [exe, "aggregate", "--rule", rule, *fedmesh_flags(rule, n),
                       "--input", str(inp), "--output", str(out), "--json"]
                best_f = best_m = best_w = float("inf")
                ref = report = None

                def run_flower():
                    nonlocal best_f, ref
                    t = time.perf_counter()
                    ref = flower(rule, results, n)
                    best_f = min(best_f, time.perf_counter() - t)

                def run_fedmesh():
                    nonlocal best_m, best_w, report
                    t = time.perf_counter()
                    proc = subprocess.run(cmd, capture_output=True, text=True)
                    wall = time.perf_counter() - t
                    if proc.returncode != 0:
                        sys.exit(f"error: {' '.join(cmd)} failed: {proc.stderr.strip()}")
                    report = json.loads(proc.stdout.strip().splitlines()[-1])
                    best_m = min(best_m, report["ms"] / 1e3)
                    best_w = min(best_w, wall)

                for rep in range(max(1, args.reps)):
                    for step in ((run_flower, run_fedmesh) if rep % 2 == 0 else (run_fedmesh, run_flower)):
                        step()
                got = np.load(out)
                diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
                scale = max(1.0, float(np.max(np.abs(ref))))
                same = "-"
                if rule == "krum":
                    idx = [i for i in range(n) if np.array_equal(x[i], ref)]
                    same = "yes" if idx == report["selected"] else f"no (flwr {idx}, fedmesh {report['selected']})"
                ok = diff <= 1e-5 * scale and same in ("-", "yes")
                bad += not ok
                rows.append((n, p, rule, diff, same, best_f * 1e3, best_m * 1e3, best_w * 1e3,
                             best_f / best_m if best_m > 0 else float("inf"), ok))
                print(f"  {rule:>13} N={n} P={p}: max|diff| {diff:.2e}, flwr {best_f*1e3:.1f} ms, "
                      f"fedmesh {best_m*1e3:.1f} ms (process {best_w*1e3:.1f} ms)", file=sys.stderr)
    load_after = load()
    conditions = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu_model()}, "
                  f"{os.cpu_count()} cores; load {load_before:.2f} before, {load_after:.2f} after; "
                  f"flwr {flwr.__version__}, numpy {np.__version__}; f = min({f}, (N-3)//4); "
                  f"best of {args.reps}, alternating")
    head = ("N", "P", "rule", "max abs diff", "same Krum pick", "Flower ms", "fedmesh rule ms",
            "fedmesh process ms", "Flower / fedmesh rule", "agree")
    md = [conditions, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        md.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1e} | {r[4]} | {r[5]:.1f} | {r[6]:.1f} | "
                  f"{r[7]:.1f} | {r[8]:.1f}x | {'yes' if r[9] else 'NO'} |")
    if args.out:
        Path(args.out).write_text("\n".join(md) + "\n")
    if args.markdown:
        print("\n".join(md))
    else:
        print(conditions)
        print(f"{head[0]:>5} {head[1]:>8} {head[2]:>13} {head[3]:>10} {head[4]:>14} "
              f"{head[5]:>10} {head[6]:>10} {head[7]:>10} {'speed-up':>8} {head[9]:>5}")
        for r in rows:
            print(f"{r[0]:>5} {r[1]:>8} {r[2]:>13} {r[3]:>10.1e} {r[4]:>14} {r[5]:>10.1f} "
                  f"{r[6]:>10.1f} {r[7]:>10.1f} {r[8]:>7.1f}x {'yes' if r[9] else 'NO':>5}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
