"""The loader benchmark runs end to end at its smoke scale (its Fat Rows checked equal to
lateseq's rebuild, Ray's output checked exactly once) and reports every part; no timing
is asserted."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_tiny_run_reports_loaders_cold_reads_and_ray(tmp_path):
    out = tmp_path / "loader.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loader.py"), "--tiny", "--json", str(out)],
                          cwd=ROOT, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["benchmark"] == "loader" and r["scale"] == "tiny" and r["timed_examples"] > 0
    assert "**loader ex/s, warm" in done.stdout and "| 4096 | 2 |" in done.stdout
    for n in ("256", "4096"):
        loader = r["loader"][n]
        assert set(loader) == {"lateseq", "fat:arrow-ipc", "fat:parquet-smallest"}
        for side in loader.values():
            assert set(side) == {"0", "1", "2"}
            assert all(w["examples"] == r["timed_examples"] and w["ex_s"] > 0 for w in side.values())
        cold = r["cold"][n]
        assert {mode: len(configs) for mode, configs in cold.items()} == {
            "epoch": 4, "epoch-no-readahead": 4, "batch": 2, "batch-readahead": 2}
        for mode, configs in cold.items():
            for entry in configs.values():  # the batch modes time the first batches only
                assert entry["examples"] == r["cold_examples"] if mode.startswith("epoch") else entry["examples"] > 0
                assert entry["resident_after_drop"] is None or entry["resident_after_drop"] < 0.5
        pipeline = r["pipeline"][n]  # prefetch with a trainer's step
        assert pipeline["step_s"] > 0 and all(0 <= pipeline[c]["waited_share"] <= 1 for c in ("on", "off"))
        assert "prefetch with a trainer" in done.stdout
        rebatched = r["rebatch"][n]  # base batches joined in the trainer: the same examples
        assert rebatched["whole"]["examples"] == rebatched["rebatched"]["examples"] == r["timed_examples"]
        # co-partitioning on and off: every example once across the ranks, each rank's pass timed cold
        assert [cop["hosts"] for cop in r["copartition"]] == [2, 4]
        for hosts in r["copartition"]:
            cop = hosts["n"][n]
            for config in ("on", "off"):
                assert cop[config]["examples"] == r["cold_examples"] and len(cop[config]["ranks"]) == hosts["hosts"]
                assert all(rank["ex_s"] > 0 for rank in cop[config]["ranks"])
            assert cop["ex_s_vs_off"] > 0 and cop["read_vs_off"] >= 0
    if importlib.util.find_spec("ray") is None:
        assert r["ray"].startswith("not measured")
    else:
        assert {"in-process", "1", "2"} == set(r["ray"]["256"])
    assert r["targets"] and all({"target", "value", "threshold", "met"} <= t.keys() for t in r["targets"])
