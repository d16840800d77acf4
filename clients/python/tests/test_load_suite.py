"""benchmarks/load_suite.py: its bookkeeping, and a small run of all phases against a real server."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "load_suite.py"
SMALL = ["--unary", "40", "--batch", "40", "--cancel", "20", "--deadline", "20", "--controls", "4",
         "--concurrency", "8", "--streams", "4", "--window", "4", "--max-new-tokens", "8",
         "--control-max-new-tokens", "256"]
FIELDS = {"name", "sent", "ok", "lost", "duplicated", "errors", "unexpected", "p50_ms", "p99_ms", "wall_s",
          "judgments_per_s"}


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("load_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["load_suite"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_tally_counts_lost_duplicated_unsent_and_unexpected(suite):
    tally = suite.Tally("t", frozenset({"CANCELLED"}))
    for rid in ("a", "b", "c", "d", "e"):
        tally.send(rid)
    tally.answer("a", "OK")
    tally.answer("a", "OK")  # twice
    tally.answer("b", "CANCELLED", "cancelled by the client")
    tally.answer("c", "UNAVAILABLE", "connection closed")
    tally.answer("zz", "OK")  # never sent
    tally.answer("e", "OK")
    r = tally.report()
    assert (r.sent, r.ok, r.lost, r.duplicated) == (5, 2, 1, 1)  # "d" has no answer
    assert r.errors == {"CANCELLED": 1, "UNAVAILABLE": 1, suite.UNSENT_ID: 1}
    assert r.unexpected == {"UNAVAILABLE": 1, suite.UNSENT_ID: 1}
    assert r.p50_ms is not None and r.p99_ms >= r.p50_ms
    failures = suite.failures_of([r], {"rmr1_num_requests_running": 0.0, "rmr1_kv_cache_usage_perc": None}, None)
    assert any("1 lost" in f for f in failures) and any("1 duplicated" in f for f in failures)
    assert any("UNAVAILABLE (connection closed)" in f for f in failures)
    assert any("rmr1_kv_cache_usage_perc is None" in f for f in failures)
    assert not any("rmr1_num_requests_running" in f for f in failures)
    assert suite.failures_of([], {}, -15) == ["the server exited with status -15"]
    [overlap] = suite.failures_of([], {}, None, controls_overlapping=0)
    assert "control-max-new-tokens" in overlap
    assert suite.failures_of([], {}, None, controls_overlapping=1) == []


def test_percentiles_and_prometheus_text(suite, tmp_path):
    assert suite._percentile([1.0], 99) == 1.0
    assert suite._percentile([float(i) for i in range(1, 101)], 50) == 50.0
    assert suite._percentile([float(i) for i in range(1, 101)], 99) == 99.0
    page = tmp_path / "metrics"
    page.write_text(
        "# HELP rmr1_num_requests_running Sequences in the running batch.\n"
        "# TYPE rmr1_num_requests_running gauge\n"
        "rmr1_num_requests_running 0\n"
        'rmr1_kv_cache_usage_perc{model="a"} 0.25\n'
        'rmr1_kv_cache_usage_perc{model="b"} 0.5\n'
        "rmr1_num_requests_running_total 7\n"
        "rmr1_num_requests_waiting 3 1700000000000\n"  # with a timestamp
    )
    assert suite.scrape(page.as_uri()) == {
        "rmr1_num_requests_running": 0.0, "rmr1_num_requests_waiting": 3.0, "rmr1_kv_cache_usage_perc": 0.75,
    }


def test_small_run_passes_and_reports_every_phase(tmp_path):
    report_path = tmp_path / "load.json"
    run = subprocess.run([sys.executable, str(SUITE), *SMALL, "--json", str(report_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS" in run.stdout and "| deadline controls" in run.stdout
    report = json.loads(report_path.read_text())
    assert report["passed"] is True and report["failures"] == []
    phases = {p["name"]: p for p in report["phases"]}
    assert list(phases) == ["unary", "batch", "cancel storm", "deadline storm", "deadline controls"]
    assert all(FIELDS <= set(p) for p in phases.values())
    sizes = {"unary": 40, "batch": 40, "cancel storm": 20, "deadline storm": 20, "deadline controls": 4}
    for name, p in phases.items():
        assert p["sent"] == sizes[name], name
        assert p["lost"] == 0 and p["duplicated"] == 0 and p["unexpected"] == {}, name
        assert p["ok"] + sum(p["errors"].values()) == p["sent"], name
        assert p["wall_s"] > 0
    for name in ("unary", "batch", "deadline controls"):
        assert phases[name]["ok"] == sizes[name] and phases[name]["errors"] == {}
        assert 0 < phases[name]["p50_ms"] <= phases[name]["p99_ms"] and phases[name]["judgments_per_s"] > 0
    assert set(phases["cancel storm"]["errors"]) <= {"CANCELLED"}
    assert set(phases["deadline storm"]["errors"]) <= {"CANCELLED", "DEADLINE_EXCEEDED"}
    assert report["gauges"] == {"rmr1_num_requests_running": 0, "rmr1_num_requests_waiting": 0,
                                "rmr1_kv_cache_usage_perc": 0}
    assert report["rss_before_kib"] > 0 and report["rss_after_kib"] > 0
    assert report["rss_peak_kib"] >= report["rss_after_kib"]
    assert report["controls_overlapping"] > 0
    assert report["config"]["unary"] == 40 and report["wall_s"] < 60
