"""The combined closing line of `make test`'s pytest calls: ``weaktok: N passed, N failed, N skipped``.

    python tests/summary.py .pytest-fast.xml .pytest-slow.xml

Reads the JUnit XML files pytest wrote (--junitxml); exits 1 if any test failed or errored. Not a test module.
"""

import sys
import xml.etree.ElementTree as ET


def main(paths: list[str]) -> int:
    total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for path in paths:
        root = ET.parse(path).getroot()
        for suite in root.iter("testsuite"):
            for k in total:
                total[k] += int(suite.get(k, 0))
    failed = total["failures"] + total["errors"]
    passed = total["tests"] - failed - total["skipped"]
    print(f"weaktok: {passed} passed, {failed} failed, {total['skipped']} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
