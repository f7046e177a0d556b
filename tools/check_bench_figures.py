#!/usr/bin/env python3
"""switchboard-bench --figures: only the named figure is measured and reported.

Usage: check_bench_figures.py PATH_TO_SWITCHBOARD_BENCH
"""
import json
import subprocess
import sys

run = subprocess.run(
    [sys.argv[1], "--quick", "--json", "--figures", "w256", "--transports", "inproc,tcp"],
    capture_output=True, text=True, timeout=60, check=True)
report = json.loads(run.stdout)
results = report["results"]
assert report["errors"] == 0, report
# 2 transports x 4 servers (the floor and three executors) x 2 payloads, one figure each
assert len(results) == 16 and report["figures"] == 16, report
for result in results:
    assert "latency" not in result and "cast" not in result, result
    [window] = result["throughput"]
    assert window["window"] == 256 and window["calls"] > 0, result
print("ok: %d measurements, each with only w256" % len(results))
