#!/usr/bin/env python3
"""Tests of report.py on a small hand-made run directory (standard library).

    python3 bench/workload/test_report.py
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
T0 = 1_700_000_000_000  # ms
WIN = 10_000
HOUR = 3_600_000

IDS = {
    "r-cache": "a" * 64,
    "r-web": "b" * 64,
    "r-miner": "c" * 64,
    "r-scanner": "d" * 64,
}


def alert(container: str, ts: int, feats=("cpu_cores",)) -> str:
    return json.dumps(
        {
            "id": "x",
            "ts_ms": ts,
            "tenant": "t",
            "node": "n",
            "container": container,
            "severity": "medium",
            "score": 2.0,
            "threshold": 1.0,
            "model_version": None,
            "top_features": [[f, 1.0] for f in feats],
        }
    )


def write_run(d: Path, alerts: list[str]) -> None:
    end = T0 + HOUR  # one hour of run
    model = T0 + 6 * 60_000
    (d / "run.env").write_text(
        "\n".join(
            [
                "run_id=r",
                f"t0_ms={T0}",
                f"end_ms={end}",
                f"model_seen_ms={model}",
                f"window_ms={WIN}",
                "cpus=2",
                "model_log_line=",
            ]
        )
        + "\n"
    )
    rows = ["name\trole\tclass\tid\timage"]
    for name, cls in (("r-cache", "benign"), ("r-web", "benign"), ("r-miner", "attack"), ("r-scanner", "attack")):
        rows.append(f"{name}\t{name[2:]}\t{cls}\t{IDS[name]}\timg")
    (d / "containers.tsv").write_text("\n".join(rows) + "\n")
    # privilege change in cache 20 min in for 60 s; miner 30 min in for 60 s; scan 40 min in.
    att = ["kind\tcontainer\tstart_ms\tstop_ms\texit"]
    att.append(f"privilege_escalation\tr-cache\t{T0 + 20 * 60_000}\t{T0 + 21 * 60_000}\t0")
    att.append(f"cryptojacking\tr-miner\t{T0 + 30 * 60_000}\t{T0 + 31 * 60_000}\t0")
    att.append(f"port_scan\tr-scanner\t{T0 + 40 * 60_000}\t{T0 + 41 * 60_000}\t0")
    (d / "attacks.tsv").write_text("\n".join(att) + "\n")
    (d / "alerts.jsonl").write_text("\n".join(alerts) + "\nnot json\n")
    (d / "load.tsv").write_text(f"ts_ms\tload1\tload5\tnode_rss_kb\n{T0}\t1.5\t1.0\t10240\n{T0 + 10_000}\t2.5\t1.2\t12288\n")


def run_report(alerts: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_run(d, alerts)
        out = subprocess.run(
            [sys.executable, str(HERE / "report.py"), str(d)], capture_output=True, text=True, timeout=60
        )
        if out.returncode != 0:
            raise AssertionError(out.stderr)
        return json.loads((d / "report.json").read_text())


class ReportTest(unittest.TestCase):
    def test_detection_and_time_to_first_alert(self) -> None:
        miner_start = T0 + 30 * 60_000
        rep = run_report(
            [
                alert(IDS["r-miner"][:12], miner_start + 7_000, ("cpu_cores", "log1p_pids")),
                alert(IDS["r-miner"][:12], miner_start + 17_000),
                # before its attack: not a detection
                alert(IDS["r-scanner"][:12], T0 + 39 * 60_000),
            ]
        )
        by_kind = {a["kind"]: a for a in rep["attacks"]}
        self.assertTrue(by_kind["cryptojacking"]["detected"])
        self.assertEqual(by_kind["cryptojacking"]["time_to_first_alert_s"], 7.0)
        self.assertEqual(by_kind["cryptojacking"]["alerts"], 2)
        self.assertEqual(by_kind["cryptojacking"]["first_top_features"], ["cpu_cores", "log1p_pids"])
        self.assertFalse(by_kind["port_scan"]["detected"])
        self.assertEqual(by_kind["port_scan"]["pre_attack_alerts"], 1)
        self.assertFalse(by_kind["privilege_escalation"]["detected"])
        self.assertEqual(rep["summary"]["attacks_detected"], 1)
        self.assertEqual(rep["summary"]["median_time_to_first_alert_s"], 7.0)

    def test_alert_one_window_after_the_stop_still_counts(self) -> None:
        stop = T0 + 41 * 60_000
        rep = run_report([alert(IDS["r-scanner"][:12], stop + WIN), alert(IDS["r-miner"][:12], T0 + 31 * 60_000 + WIN + 1)])
        by_kind = {a["kind"]: a for a in rep["attacks"]}
        self.assertTrue(by_kind["port_scan"]["detected"])
        self.assertFalse(by_kind["cryptojacking"]["detected"])

    def test_benign_rate_excludes_attack_spans_and_the_time_before_the_model(self) -> None:
        attack = T0 + 20 * 60_000
        rep = run_report(
            [
                alert(IDS["r-web"][:12], T0 + 60_000),  # before the model: not counted
                alert(IDS["r-web"][:12], T0 + 10 * 60_000),
                alert(IDS["r-web"][:12], T0 + 10 * 60_000 + WIN),  # same episode
                alert(IDS["r-web"][:12], T0 + 50 * 60_000),
                alert(IDS["r-cache"][:12], T0 + 10 * 60_000),  # before its attack
                alert(IDS["r-cache"][:12], attack + 5_000),  # during its attack: a detection
                alert(IDS["r-cache"][:12], T0 + 45 * 60_000),  # after it
                alert("e" * 12, T0 + 45 * 60_000),  # not a scenario container
            ]
        )
        benign = {b["container"]: b for b in rep["benign"]}
        web_hours = (HOUR - 6 * 60_000) / HOUR
        self.assertEqual(benign["web"]["alerts"], 3)
        self.assertEqual(benign["web"]["episodes"], 2)
        self.assertAlmostEqual(benign["web"]["benign_hours"], web_hours, places=3)
        self.assertAlmostEqual(benign["web"]["alerts_per_container_hour"], round(3 / web_hours, 2), places=2)
        cache_hours = web_hours - (60_000 + WIN) / HOUR
        self.assertEqual(benign["cache"]["alerts"], 2)
        self.assertAlmostEqual(benign["cache"]["benign_hours"], cache_hours, places=3)
        self.assertEqual(benign["cache"]["hosts_attack"], "privilege_escalation")
        pe = {a["kind"]: a for a in rep["attacks"]}["privilege_escalation"]
        self.assertTrue(pe["detected"])
        self.assertTrue(pe["inside_benign"])
        # one alert in the 14 min between the model and the attack; span 60 s + one window
        expected = 1 - math.exp(-(1 / (14 * 60_000)) * (60_000 + WIN))
        self.assertAlmostEqual(pe["chance_p_any"], round(expected, 3), places=3)
        self.assertEqual(pe["pre_attack_alerts"], 1)
        self.assertEqual(pe["post_attack_alerts"], 1)
        self.assertEqual(rep["summary"]["alerts_other_containers"], 1)
        self.assertEqual(rep["summary"]["unparsed_alert_lines"], 0)
        self.assertEqual(rep["summary"]["benign_alerts"], 5)
        self.assertEqual(rep["summary"]["node_rss_max_kb"], 12288)
        self.assertEqual(rep["summary"]["load1_max"], 2.5)

    def test_no_alerts_at_all(self) -> None:
        rep = run_report([])
        self.assertEqual(rep["summary"]["attacks_detected"], 0)
        self.assertIsNone(rep["summary"]["median_time_to_first_alert_s"])
        self.assertEqual(rep["summary"]["benign_alerts_per_container_hour"], 0.0)


if __name__ == "__main__":
    unittest.main()
