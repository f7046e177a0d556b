#!/usr/bin/env python3
"""Counts gtest cases in a directory of XML reports; prints "PASSED FAILED".

A case counts as failed when it has a <failure> element; skipped cases count as neither.
A report that is missing or unreadable (a crashed binary) counts as one failure.
"""
import pathlib
import sys
import xml.etree.ElementTree as ET

passed = failed = 0
root = pathlib.Path(sys.argv[1])
for report in sorted(root.glob("*.xml")) if root.is_dir() else []:
    try:
        tree = ET.parse(report)
    except ET.ParseError:
        failed += 1
        continue
    for case in tree.iter("testcase"):
        if case.find("failure") is not None:
            failed += 1
        elif case.get("result") == "skipped" or case.find("skipped") is not None:
            continue
        elif case.get("status", "run") == "run":
            passed += 1
print(passed, failed)
