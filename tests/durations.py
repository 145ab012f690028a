"""Turn the `--durations` table of a pytest log into the Markdown rows of tests/README.md.

    .venv/bin/python -m pytest -v --durations=0 --durations-min=5 | tee pytest.log
    .venv/bin/python tests/durations.py pytest.log [--min 10]

One row per test: its call time plus the setup time of the fixtures it was the first to need (a
session run is charged to the first test that uses it), seconds rounded, slowest first.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

LINE = re.compile(r"^\s*([\d.]+)s (setup|call|teardown)\s+(\S+)")


def durations(log: str) -> dict[str, dict[str, float]]:
    """{test id: {phase: seconds}} from the lines after pytest's 'slowest durations' header."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    inside = False
    for line in log.splitlines():
        if "slowest" in line and "durations" in line:
            inside = True
            continue
        m = LINE.match(line)
        if inside and m:
            out[m.group(3)][m.group(2)] = float(m.group(1))
        elif inside and line.startswith("=") and out:
            break
    return dict(out)


def table(rows: dict[str, dict[str, float]], minimum: float) -> str:
    lines = ["| test | seconds (setup + call) |", "| --- | ---: |"]
    total = {k: sum(v.values()) for k, v in rows.items()}
    for test, seconds in sorted(total.items(), key=lambda kv: -kv[1]):
        if seconds >= minimum:
            phases = rows[test]
            lines.append(f"| `{test}` | {seconds:.0f} ({phases.get('setup', 0):.0f} + {phases.get('call', 0):.0f}) |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log", type=Path)
    ap.add_argument("--min", type=float, default=10.0, help="leave out tests faster than this (seconds)")
    args = ap.parse_args()
    print(table(durations(args.log.read_text()), args.min))


if __name__ == "__main__":
    main()
