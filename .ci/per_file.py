"""Seconds per test file, from pytest's JUnit XML reports (the figures of docs/testing.md)."""

import sys
import xml.etree.ElementTree as ET
from collections import Counter

seconds, tests = Counter(), Counter()
for report in sys.argv[1:]:
    for case in ET.parse(report).iter("testcase"):
        name = case.get("classname", "").removeprefix("tests.").split(".")[0] + ".py"
        seconds[name] += float(case.get("time", 0))
        tests[name] += 1
print("| file | tests | seconds |\n| --- | ---: | ---: |")
for name, total in seconds.most_common():
    print(f"| `tests/{name}` | {tests[name]} | {total:.1f} |")
print(f"| all | {sum(tests.values())} | {sum(seconds.values()):.1f} |")
