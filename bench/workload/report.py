#!/usr/bin/env python3
"""Report of one real-workload benchmark run (bench/workload/run.sh).

    python3 bench/workload/report.py DIR

Reads DIR/run.env, containers.tsv, attacks.tsv (ground truth: real start and
stop of every attack), alerts.jsonl (the node's JSON alert lines) and
load.tsv; writes DIR/report.md and DIR/report.json and prints the Markdown.

Per attack: detected (at least one alert on the attacked container from the
attack's start to its stop plus one window, since a window that ends up to one
window after the stop still holds attack activity), time from the start to the
first such alert (window end), alerts in that span, the top features of the
first one, the chance of at least one alert in that span from the
container's own alert rate before the attack alone (Poisson: a "detection" in
a container that alerts all the time says little), and the container's alerts
after the attack (an attack can leave a container changed).
Per benign container: alerts per container-hour over its benign time (from the
node's bootstrap model to the end, minus its own attack spans), and episodes
per container-hour (alerts at most two windows apart merged; a post-hoc
grouping, not the node's incidents).
Standard library only.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
import sys
from pathlib import Path


def read_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            env[k.strip()] = v.strip()
    return env


def read_tsv(path: Path) -> list[dict[str, str]]:
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    if not lines:
        return []
    head = lines[0].split("\t")
    return [dict(zip(head, l.split("\t"))) for l in lines[1:]]


def read_alerts(path: Path) -> tuple[list[dict], int]:
    alerts, bad = [], 0
    if not path.exists():
        return alerts, bad
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            a = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(a, dict) and "container" in a and "ts_ms" in a:
            # Incident records: an incident counts once, at its opening;
            # updates, closes and response records are not new alerts.
            if a.get("response") or a.get("state", "open") != "open":
                continue
            if not a.get("rule") and a.get("rules"):
                a["rule"] = a["rules"][0]
            alerts.append(a)
        else:
            bad += 1
    return alerts, bad


def model_ms_from_log(line: str) -> int | None:
    """Timestamp of the node's 'local bootstrap model' log line (RFC 3339)."""
    for tok in line.split():
        if len(tok) >= 20 and tok[4] == "-" and "T" in tok:
            t = tok.rstrip("Z")
            try:
                d = dt.datetime.fromisoformat(t[:26]).replace(tzinfo=dt.timezone.utc)
                return int(d.timestamp() * 1000)
            except ValueError:
                continue
    return None


def episodes(ts: list[int], gap_ms: int) -> int:
    n, last = 0, None
    for t in sorted(ts):
        if last is None or t - last > gap_ms:
            n += 1
        last = t
    return n


def fmt_f(x: float | None, nd: int = 1) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    d = Path(sys.argv[1])
    env = read_env(d / "run.env")
    t0, end = int(env["t0_ms"]), int(env["end_ms"])
    win = int(env["window_ms"])
    model = model_ms_from_log(env.get("model_log_line", ""))
    if model is None and env.get("model_seen_ms"):
        model = int(env["model_seen_ms"])
    containers = read_tsv(d / "containers.tsv")
    attacks = read_tsv(d / "attacks.tsv")
    alerts, bad = read_alerts(d / "alerts.jsonl")
    load = read_tsv(d / "load.tsv") if (d / "load.tsv").exists() else []

    by_name = {c["name"]: c for c in containers}

    def owner(a: dict) -> str | None:
        cid = str(a.get("container", ""))
        if not cid:
            return None
        for c in containers:
            if c["id"].startswith(cid) or cid.startswith(c["id"]):
                return c["name"]
        return None

    per: dict[str, list[dict]] = {c["name"]: [] for c in containers}
    others = 0
    for a in alerts:
        n = owner(a)
        if n is None:
            others += 1
        else:
            per[n].append(a)
    # Attack spans per container: [start, stop + one window].
    spans: dict[str, list[tuple[int, int]]] = {}
    for at in attacks:
        spans.setdefault(at["container"], []).append((int(at["start_ms"]), int(at["stop_ms"]) + win))

    def in_spans(name: str, ts: int) -> bool:
        return any(s <= ts <= e for s, e in spans.get(name, []))

    obs_start = model if model is not None else end

    def quiet(name: str) -> tuple[float, list[int]]:
        """Hours a container was watched by a model outside its attack spans, and its alerts then."""
        span_ms = max(0, end - obs_start)
        for s, e in spans.get(name, []):
            s2, e2 = max(s, obs_start), min(e, end)
            span_ms -= max(0, e2 - s2)
        ts = [int(a["ts_ms"]) for a in per[name] if int(a["ts_ms"]) >= obs_start and not in_spans(name, int(a["ts_ms"]))]
        return span_ms / 3_600_000, ts

    # Every container's own alert rate outside its attack spans: what chance
    # alone gives during an attack.
    rate_of: dict[str, float | None] = {}
    for c in containers:
        hours, ts = quiet(c["name"])
        rate_of[c["name"]] = len(ts) / hours if hours > 0 else None

    # Benign containers.
    benign_rows = []
    for c in containers:
        if c["class"] != "benign":
            continue
        name = c["name"]
        hours, ts = quiet(name)
        rate = rate_of[name]
        eps = episodes(ts, 2 * win)
        feats: dict[str, int] = {}
        for a in per[name]:
            if int(a["ts_ms"]) in ts:
                for f in a.get("top_features", [])[:1]:
                    feats[f[0]] = feats.get(f[0], 0) + 1
        top = sorted(feats.items(), key=lambda kv: -kv[1])[:3]
        benign_rows.append(
            {
                "container": c["role"],
                "hosts_attack": ",".join(at["kind"] for at in attacks if at["container"] == name),
                "benign_hours": round(hours, 4),
                "alerts": len(ts),
                "alerts_per_container_hour": None if rate is None else round(rate, 2),
                "episodes": eps,
                "episodes_per_container_hour": None if hours <= 0 else round(eps / hours, 2),
                "top_first_features": [f"{k} ({v})" for k, v in top],
            }
        )

    # Attacks.
    attack_rows = []
    for at in attacks:
        name = at["container"]
        s, e = int(at["start_ms"]), int(at["stop_ms"])
        hits = sorted((a for a in per.get(name, []) if s <= int(a["ts_ms"]) <= e + win), key=lambda a: int(a["ts_ms"]))
        first = hits[0] if hits else None
        c = by_name.get(name, {})
        # The container's own rate before this attack (from the model on,
        # outside earlier attack spans): what chance alone would give.
        pre_ms = max(0, s - obs_start)
        for s0, e0 in spans.get(name, []):
            if e0 < s:
                pre_ms -= max(0, min(e0, s) - max(s0, obs_start))
        pre = [a for a in per.get(name, []) if obs_start <= int(a["ts_ms"]) < s and not in_spans(name, int(a["ts_ms"]))]
        rate = len(pre) / (pre_ms / 3_600_000) if pre_ms > 0 else None
        chance = None if rate is None else rate * (e + win - s) / 3_600_000
        p_chance = None if chance is None else 1 - math.exp(-chance)
        attack_rows.append(
            {
                "kind": at["kind"],
                "container": c.get("role", name),
                "inside_benign": c.get("class") == "benign",
                "duration_s": round((e - s) / 1000, 1),
                "exit": at.get("exit"),
                "detected": first is not None,
                "time_to_first_alert_s": None if first is None else round((int(first["ts_ms"]) - s) / 1000, 1),
                "alerts": len(hits),
                "windows": max(1, round((e + win - s) / win)),
                "chance_alerts": None if chance is None else round(chance, 2),
                "chance_p_any": None if p_chance is None else round(p_chance, 3),
                "first_top_features": [] if first is None else [f[0] for f in first.get("top_features", [])],
                "first_rule": None if first is None or not first.get("rule") else first["rule"].get("id"),
                "pre_attack_alerts": len(pre),
                "post_attack_alerts": sum(1 for a in per.get(name, []) if int(a["ts_ms"]) > e + win and not in_spans(name, int(a["ts_ms"]))),
            }
        )

    infra_rows = [
        {"container": c["role"], "class": c["class"], "alerts_outside_attacks": sum(1 for a in per[c["name"]] if not in_spans(c["name"], int(a["ts_ms"])))}
        for c in containers
        if c["class"] != "benign"
    ]
    loads = [float(r["load1"]) for r in load if r.get("load1")]
    rss = [int(r["node_rss_kb"]) for r in load if r.get("node_rss_kb", "0").isdigit() and int(r["node_rss_kb"]) > 0]
    benign_total_h = sum(r["benign_hours"] for r in benign_rows)
    benign_total_alerts = sum(r["alerts"] for r in benign_rows)
    summary = {
        "run_id": env.get("run_id"),
        "start_utc": dt.datetime.fromtimestamp(t0 / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round((end - t0) / 1000),
        "window_ms": win,
        "model_after_s": None if model is None else round((model - t0) / 1000, 1),
        "attacks_detected": sum(1 for r in attack_rows if r["detected"]),
        "attacks": len(attack_rows),
        "median_time_to_first_alert_s": (
            statistics.median([r["time_to_first_alert_s"] for r in attack_rows if r["detected"]])
            if any(r["detected"] for r in attack_rows)
            else None
        ),
        "benign_container_hours": round(benign_total_h, 3),
        "benign_alerts": benign_total_alerts,
        "benign_alerts_per_container_hour": round(benign_total_alerts / benign_total_h, 2) if benign_total_h > 0 else None,
        "alerts_total": len(alerts),
        "alerts_other_containers": others,
        "unparsed_alert_lines": bad,
        "load1_mean": round(statistics.mean(loads), 2) if loads else None,
        "load1_max": max(loads) if loads else None,
        "node_rss_max_kb": max(rss) if rss else None,
        "host": {k: env.get(k) for k in ("cpus", "kernel", "docker", "cgroup", "git_commit", "node_version")},
    }
    report = {"summary": summary, "attacks": attack_rows, "benign": benign_rows, "other": infra_rows}
    (d / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    md = []
    s = summary
    md.append(f"Run {s['run_id']}, {s['start_utc']}, {s['duration_s']} s, {win // 1000} s windows, "
              f"bootstrap model after {fmt_f(s['model_after_s'])} s; host: {s['host']['cpus']} CPUs, "
              f"load average mean {fmt_f(s['load1_mean'], 2)} (max {fmt_f(s['load1_max'], 2)}), "
              f"node RSS max {fmt_f(None if s['node_rss_max_kb'] is None else s['node_rss_max_kb'] / 1024)} MiB, "
              f"kernel {s['host']['kernel']}, Docker {s['host']['docker']} (cgroup {s['host']['cgroup']}), "
              f"commit {s['host']['git_commit']}.")
    md.append("")
    md.append("| attack | container | detected | time to first alert | alerts / windows | chance of an alert anyway | alerts after | first alert's top features |")
    md.append("|---|---|---|---:|---:|---:|---:|---|")
    for r in attack_rows:
        where = r["container"] + (" (benign)" if r["inside_benign"] else "")
        md.append(
            f"| {r['kind']} | {where} | {'yes' if r['detected'] else '**no**'} | "
            f"{'—' if r['time_to_first_alert_s'] is None else str(r['time_to_first_alert_s']) + ' s'} | "
            f"{r['alerts']} / {r['windows']} | {'—' if r['chance_p_any'] is None else format(r['chance_p_any'] * 100, '.0f') + ' %'} | "
            f"{r['post_attack_alerts']} | "
            f"{', '.join(r['first_top_features']) or (r['first_rule'] or '—')} |"
        )
    md.append("")
    md.append(f"Detected {s['attacks_detected']} of {s['attacks']}; median time to first alert "
              f"{fmt_f(s['median_time_to_first_alert_s'])} s (window end minus attack start). "
              "Chance of an alert anyway: the probability that the container's own alert rate before "
              "the attack gives at least one alert in the attack's span (Poisson).")
    md.append("")
    md.append("| benign container | benign hours | alerts | alerts / container-hour | episodes / container-hour | most frequent first feature |")
    md.append("|---|---:|---:|---:|---:|---|")
    for r in benign_rows:
        md.append(
            f"| {r['container']}{' (hosts ' + r['hosts_attack'] + ')' if r['hosts_attack'] else ''} | {r['benign_hours']:.3f} | "
            f"{r['alerts']} | {fmt_f(r['alerts_per_container_hour'])} | {fmt_f(r['episodes_per_container_hour'])} | "
            f"{', '.join(r['top_first_features']) or '—'} |"
        )
    md.append(f"| **all benign** | {benign_total_h:.3f} | {benign_total_alerts} | "
              f"**{fmt_f(s['benign_alerts_per_container_hour'])}** | | |")
    md.append("")
    md.append("Attack containers and infrastructure, alerts outside attack spans: "
              + ", ".join(f"{r['container']} {r['alerts_outside_attacks']}" for r in infra_rows)
              + f". Alerts on containers outside the scenario: {others}.")
    text = "\n".join(md) + "\n"
    (d / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
