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


def _loader_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import loader
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return loader


def test_affinity_targets_compare_each_side_at_its_faster_readahead():
    """Affinity on (readahead off, as "auto" reads a store bigger than memory) against
    affinity off at whichever readahead ran it faster: here readahead on, reading more
    bytes faster; co-partitioning is held to 1/hosts of the plain log's reads."""
    loader = _loader_module()

    def entry(ex_s, read):
        return {"ex_s": ex_s, "disk_read_bytes": read}
    cold = {"256": {"batch": {"affinity off, prefetch off": entry(4_000, 400e6),
                              "affinity on, prefetch off": entry(30_000, 40e6)},
                    "batch-readahead": {"affinity off, prefetch off": entry(15_000, 1_600e6),
                                        "affinity on, prefetch off": entry(17_000, 1_500e6)}}}
    cop = [{"hosts": 2, "n": {"256": {"read_vs_off": 0.5}}}, {"hosts": 4, "n": {"256": {"read_vs_off": 0.4}}}]
    found = {(t["target"].split(":")[-1].strip(), t["n"]): t for t in loader.targets({"cold": cold, "copartition": []})}
    read = found[("disk bytes read, less than off by", 256)]
    speed = found[("ex/s vs off", 256)]
    assert read["value"] == 0.975 and read["met"]  # 40 MB against readahead's 1.6 GB
    assert speed["value"] == 2.0 and speed["met"]  # 30k against 15k, not against 4k
    hosts = {t["target"]: t for t in loader.targets({"cold": cold, "copartition": cop}) if "hosts" in t["target"]}
    two, four = (hosts[f"co-partitioning ({k} hosts): disk bytes read per host vs 1/hosts of off"] for k in (2, 4))
    assert two["value"] == 1.0 and two["met"]
    assert four["value"] == 1.6 and not four["met"]  # a host reading more than its partitions' share
