#!/usr/bin/env python3
"""switchboard-bench --rounds: every figure is the median of its rounds, each round reported.

Usage: check_bench_rounds.py PATH_TO_SWITCHBOARD_BENCH
"""
import json
import subprocess
import sys

ROUNDS = 3
run = subprocess.run(
    [sys.argv[1], "--quick", "--json", "--figures", "latency,w16", "--transports", "inproc",
     "--executors", "threadpool", "--payloads", "32", "--rounds", str(ROUNDS)],
    capture_output=True, text=True, timeout=60, check=True)
report = json.loads(run.stdout)
assert report["errors"] == 0 and report["rounds"] == ROUNDS, report
results = report["results"]
assert [r["server"] for r in results] == ["floor", "threadpool"], report


def median_of(values):
    assert len(values) == ROUNDS, values
    return sorted(values)[(ROUNDS - 1) // 2]


for result in results:
    latency = result["latency"]
    assert latency["p50_us"] == median_of(latency["p50_us_per_round"]), result
    [window] = result["throughput"]
    assert window["window"] == 16, result
    assert window["calls_per_s"] == median_of(window["calls_per_s_per_round"]), result
    assert all(rate > 0 for rate in window["calls_per_s_per_round"]), result
print("ok: %d measurements, each the median of %d rounds" % (len(results), ROUNDS))
