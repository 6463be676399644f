"""Sums the suites' JUnit reports into the one closing line `N passed, M failed`.

usage: summary.py "LABEL|JUNIT_FILE|EXIT_CODE"…

A test counts as failed when its <testcase> has a <failure> or <error>, passed unless skipped.
A suite that exited non-zero without any failed test in its report (crash, collection error,
timeout, no report), or that ran no test at all, adds one failure of its own. Exit 1 on any failure.
"""

import sys
import xml.etree.ElementTree as ET


def count(path: str):
    passed = failed = skipped = 0
    names = []
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            failed += 1
            names.append(f"{case.get('classname', '')}::{case.get('name', '')}".lstrip(":"))
        elif "skipped" in kinds:
            skipped += 1
        else:
            passed += 1
    return passed, failed, skipped, names


def main(args) -> int:
    total_passed = total_failed = 0
    lines = []
    for arg in args:
        label, path, rc = arg.rsplit("|", 2)
        try:
            passed, failed, skipped, names = count(path)
            note = ""
        except (OSError, ET.ParseError) as e:
            passed, failed, skipped, names, note = 0, 0, 0, [], f" (no report: {e})"
        if rc != "0" and failed == 0:
            failed, note = 1, note or f" (exited {rc})"
        elif passed + failed == 0:
            failed, note = 1, " (ran no test)"
        total_passed += passed
        total_failed += failed
        extra = f", {skipped} skipped" if skipped else ""
        lines.append(f"  {label}: {passed} ok / {failed} not ok{extra}{note}")
        lines.extend(f"      not ok: {name}" for name in names)
    print("client conformance:")
    print("\n".join(lines))
    print(f"{total_passed} passed, {total_failed} failed")
    return 1 if total_failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
