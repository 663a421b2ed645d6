#!/usr/bin/env python3
"""Summarise a kosoku/Autobahn report directory (index.json + per-case JSON).

Usage: summary.py REPORT_DIR [EXPECTED_SECTION ...]

Prints, per section, how many cases ended OK / NON-STRICT / INFORMATIONAL /
FAILED, then one block per FAILED case (and one line per NON-STRICT case),
and writes the same text to REPORT_DIR/summary.txt.

A case's verdict combines Autobahn's two verdicts the way kosoku's
`CaseResult.passed` does: it passes when `behavior` is OK, NON-STRICT or
INFORMATIONAL and `behaviorClose` is OK or INFORMATIONAL; a passing case is
counted under the weaker of the two (OK < NON-STRICT < INFORMATIONAL).
Everything else (FAILED, ERROR, UNIMPLEMENTED, WRONG CODE, UNCLEAN, ...)
counts as FAILED.

Exit status: 0 when every case passed, 1 when any FAILED, 2 when the report
is missing or incomplete (no cases, or an expected section produced none).
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

COLUMNS = ("OK", "NON-STRICT", "INFORMATIONAL", "FAILED")
RANK = {"OK": 0, "NON-STRICT": 1, "INFORMATIONAL": 2}
PASSING_CLOSE = {"OK": "OK", "INFORMATIONAL": "INFORMATIONAL"}


def case_key(case_id: str) -> list[int]:
    return [int(p) for p in case_id.split(".")]


def verdict(behavior: str, behavior_close: str) -> str:
    if behavior not in RANK or behavior_close not in PASSING_CLOSE:
        return "FAILED"
    return max(behavior, PASSING_CLOSE[behavior_close], key=RANK.__getitem__)


def short(value: object, limit: int = 160) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    outdir = Path(sys.argv[1])
    expected_sections = sys.argv[2:]
    index_path = outdir / "index.json"
    if not index_path.is_file():
        print(f"autobahn: no report at {index_path}", file=sys.stderr)
        return 2
    index = json.loads(index_path.read_text())
    cases: dict[str, dict] = {}
    for per_agent in index.values():
        cases.update(per_agent)
    if not cases:
        print("autobahn: the report lists no cases", file=sys.stderr)
        return 2

    counts: dict[str, Counter] = defaultdict(Counter)
    failed: list[tuple[str, dict]] = []
    non_strict: list[tuple[str, dict]] = []
    for case_id in sorted(cases, key=case_key):
        entry = cases[case_id]
        v = verdict(entry["behavior"], entry["behaviorClose"])
        counts[case_id.split(".")[0]][v] += 1
        if v == "FAILED":
            failed.append((case_id, entry))
        elif v == "NON-STRICT":
            non_strict.append((case_id, entry))

    lines = [f"{'section':>7} " + " ".join(f"{c:>13}" for c in COLUMNS) + f" {'total':>6}"]
    total: Counter = Counter()
    for section in sorted(counts, key=int):
        row = counts[section]
        total.update(row)
        lines.append(
            f"{section:>7} "
            + " ".join(f"{row[c]:>13}" for c in COLUMNS)
            + f" {sum(row.values()):>6}"
        )
    lines.append(
        f"{'all':>7} " + " ".join(f"{total[c]:>13}" for c in COLUMNS) + f" {sum(total.values()):>6}"
    )

    def detail(case_id: str, entry: dict) -> dict:
        path = outdir / entry["reportfile"]
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    for case_id, entry in non_strict:
        d = detail(case_id, entry)
        lines.append(
            f"NON-STRICT {case_id}: received {short(d.get('received'))}, "
            f"OK would be {short((d.get('expected') or {}).get('OK'))}; "
            f"server closed with {entry.get('remoteCloseCode')}"
        )
    for case_id, entry in failed:
        d = detail(case_id, entry)
        lines += [
            f"FAILED {case_id}: behavior={entry['behavior']} behaviorClose={entry['behaviorClose']}"
            f" remoteCloseCode={entry.get('remoteCloseCode')}",
            f"    description: {d.get('description', '?')}",
            f"    expectation: {d.get('expectation', '?')}",
            f"    expected:    {short(d.get('expected'), 400)}",
            f"    received:    {short(d.get('received'), 400)}",
            f"    result:      {d.get('result', '?')} | {d.get('resultClose', '?')}",
            f"    close:       remote {d.get('remoteCloseCode')} {d.get('remoteCloseReason')!r},"
            f" local {d.get('localCloseCode')}, wasClean={d.get('wasClean')}"
            f" ({d.get('wasNotCleanReason')})",
            f"    report:      {outdir / entry['reportfile']}",
        ]

    missing = [s for s in expected_sections if s not in counts]
    if missing:
        lines.append(f"INCOMPLETE: no case ran for section(s) {', '.join(missing)}")

    text = "\n".join(lines) + "\n"
    (outdir / "summary.txt").write_text(text)
    sys.stdout.write(text)
    if missing:
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
