"""The fault-injection run (benchmarks/faults.py), small: damaged files of every kind give
the right output or a clear error naming the file; never wrong output, a crash or a bug.

The run first makes its worker crash, hang, raise and return a wrong bit on purpose
(``--self-check``), so a harness that could not see those would fail here, not pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "faults.py"
KINDS = ("schema", "manifest", "tag", "parquet", "index", "decoded")
OUTCOMES = ("correct", "clear error", "unclear error", "raw exception", "silently wrong", "crash")
TRIALS = 15


def test_damaged_files_give_the_right_output_or_a_clear_error(tmp_path):
    out = tmp_path / "faults.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--trials", str(TRIALS), "--self-check", "--json", str(out)],
                         check=False, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-6000:]
    result = json.loads(out.read_text())
    assert result["self_check"] == {"None": "correct", "clear": "clear error", "unclear": "unclear error",
                                    "raw": "raw exception", "wrong": "silently wrong", "segfault": "crash",
                                    "hang": "crash"}
    assert set(result["kinds"]) == set(KINDS)
    for kind, counts in result["kinds"].items():
        report = f"{kind}: {counts}"
        assert counts["trials"] == TRIALS and sum(counts[o] for o in OUTCOMES) == TRIALS, report
        for never in ("silently wrong", "crash", "raw exception", "unclear error"):
            assert counts[never] == 0, report
        assert counts["verify raw exception"] == 0, report
        assert counts["verify missed real damage"] == 0, report  # verify names every damaged file
        assert counts["verify found"] > 0, report
    kinds = result["kinds"]
    # the damage really was seen: durable and JSON files refused, decoded copies decoded again
    assert all(kinds[k]["clear error"] > 0 for k in ("schema", "tag", "parquet", "index")), kinds
    assert kinds["decoded"]["correct because"]["repaired"] > 0, kinds["decoded"]
