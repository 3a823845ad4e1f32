"""The README's examples run, and print what the README says they print."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = (Path(__file__).parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"example-{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs_and_prints_what_it_says(block, tmp_path):
    code = block.replace('"/tmp/', f'"{tmp_path}/')
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    printed = out.getvalue().splitlines()
    promised = [c.strip() for c in re.findall(r"print\(.*\)\s*#\s*(.*)", block)]
    for claim in promised:
        expected = claim.split(" (")[0]  # "[0 2 3] [100 101 200] (no 102: ...)"
        if expected.startswith("["):
            assert any(line.startswith(expected) for line in printed), (expected, printed)


def test_readme_performance_tables_are_the_committed_results():
    """The README's figures are rendered from benchmarks/results/, never typed by hand."""
    import subprocess
    import sys

    root = Path(__file__).parent.parent
    done = subprocess.run([sys.executable, "benchmarks/report.py", "--check"], cwd=root, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_readme_names_every_public_name():
    """The README's list of the public API holds every name ``lateseq.__all__`` exports."""
    import lateseq

    listed = README[README.index("The public API (`lateseq.__all__`)"):README.index("## CLI")]
    assert [name for name in lateseq.__all__ if f"`{name}" not in listed] == []
