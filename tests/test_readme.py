"""The README's examples (and docs/first-pipeline.md's) run, and print what they say they print."""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from pathlib import Path
from unittest import mock

import pytest

README = (Path(__file__).parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
FIRST_PIPELINE = (Path(__file__).parent.parent / "docs" / "first-pipeline.md").read_text()


@pytest.mark.parametrize("block", BLOCKS, ids=[f"example-{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs_and_prints_what_it_says(block, tmp_path):
    runs_and_prints(block, "README.md", tmp_path)


def test_first_pipeline_runs_and_prints_what_it_says(tmp_path):
    (block,) = re.findall(r"```python\n(.*?)```", FIRST_PIPELINE, re.S)
    runs_and_prints(block, "docs/first-pipeline.md", tmp_path)


def runs_and_prints(block: str, where: str, tmp_path: Path) -> None:
    code = block.replace('"/tmp/', f'"{tmp_path}/')
    out = io.StringIO()
    # the examples' tempfile.mkdtemp() folders go in tmp_path too: each run left 3-4 MB in /tmp
    with contextlib.redirect_stdout(out), mock.patch.object(tempfile, "tempdir", str(tmp_path)):
        exec(compile(code, where, "exec"), {})
    printed = out.getvalue().splitlines()
    promised = [c.strip() for c in re.findall(r"print\(.*\)\s*#\s*(.*)", block)]
    assert promised
    for claim in promised:
        expected = claim.split(" (")[0]  # "[0 2 3] [100 101 200] (no 102: ...)"
        if expected.startswith("["):
            assert any(line.startswith(expected) for line in printed), (expected, printed)


def test_first_pipeline_shell_steps_run(tmp_path):
    """The page's shell steps, on a day of requests between two days of events."""
    import subprocess
    import sys

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lateseq.datasets import synthetic_events, synthetic_requests

    events = synthetic_events(300, mean_len=30, start_ts=0, span_s=2 * 86_400)
    day = pa.array(events["ts"].to_numpy() // 86_400)
    for d in (0, 1):
        pq.write_table(events.filter(pa.compute.equal(day, d)), tmp_path / f"events-day{d}.parquet")
    requests = synthetic_requests(events.filter(pa.compute.equal(day, 1)), 200)
    pq.write_table(requests, tmp_path / "requests-day1.parquet")
    (script,) = re.findall(r"```bash\n(.*?)```", FIRST_PIPELINE, re.S)
    done = subprocess.run(["bash", "-c", f'set -e; lateseq() {{ "{sys.executable}" -m lateseq "$@"; }}\n{script}'],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    train = pq.read_table(tmp_path / "train.parquet")
    assert train.num_rows == 200 and train["label"].equals(requests["label"])
    assert np.array_equal(pq.read_table(tmp_path / "log").column("request_ts"), requests["request_ts"])


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
