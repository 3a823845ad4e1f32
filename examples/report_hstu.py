"""Markdown tables for docs/hstu.md from the results files in examples/results/.

    python examples/report_hstu.py            # prints every section whose results exist

Each table says which command made it, when, and on what machine, so the docs carry
numbers that were measured, not typed. Times are medians over epochs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "mrr")
# generative-recommenders' README (verified 04/15/2024), HSTU row: HR@10, NDCG@10, HR@50, NDCG@50
PUBLISHED_HSTU = {"hr@10": 0.3097, "ndcg@10": 0.1720, "hr@50": 0.5754, "ndcg@50": 0.2307}


def _made_by(r: dict, name: str) -> str:
    m = r["machine"]
    where = f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} thread)"
    if m.get("gpu"):
        where += f", {m['gpu']}"
    return f"Made by `{r['command']}` on {r['date']} (`examples/results/{name}`): {where}; {r['wall_s'] / 60:.0f} min."


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _speed(run: dict) -> tuple[float, float, float, float]:
    """Median s/epoch, s/step and examples/s over a run's epochs (robust to other jobs on a
    shared machine), and the share of training time spent waiting for batches."""
    e = run["epochs"]
    median = statistics.median(x["train_s"] for x in e)
    return (median, median / e[0]["steps"], e[0]["examples"] / median,
            sum(x["data_s"] for x in e) / sum(x["train_s"] for x in e))


def ml1m(name: str) -> str:
    r = json.loads((RESULTS / name).read_text())
    lines = [_made_by(r, name), "",
             ("| source | epochs | best epoch | HR@10 | NDCG@10 | HR@50 | NDCG@50 | MRR | s/epoch | s/step | "
              "examples/s | data wait |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for source, run in r["runs"].items():
        s_epoch, s_step, per_s, wait = _speed(run)
        lines.append(f"| {source} | {len(run['epochs'])} | {run['best_epoch']} | "
                     + " | ".join(f"{run['test'][m]:.4f}" for m in METRICS)
                     + f" | {s_epoch:.1f} | {s_step:.3f} | {per_s:.0f} | {wait:.1%} |")
    if r["config"]["max_len"] == 200:
        lines.append("| published HSTU (generative-recommenders README) | 101 | - | "
                     + " | ".join(f"{PUBLISHED_HSTU[m]:.4f}" for m in METRICS[:4]) + " | - | - | - | - | - |")
    if "identical" in r:
        same = r["identical"]
        lines += ["", (f"Every training, validation and test batch bit-identical across the two sources "
                       f"(sha256 per batch, compared per epoch): **{same['batches']}**; "
                       f"metrics identical: **{same['metrics']}**.")]
    return "\n".join(lines)


def lengths(names: list[str]) -> str:
    rows = [json.loads((RESULTS / n).read_text()) for n in names]
    lines = [("| max length | epochs | best epoch | HR@10 | NDCG@10 | HR@50 | NDCG@50 | MRR | s/epoch | "
              "lateseq store + train log | read cache | Fat Rows (train) | Fat Rows ÷ lateseq |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        run = r["runs"]["lateseq"]
        b = r["data_bytes"]
        ours = b["lateseq"]["store"] + b["lateseq"]["train"]
        fat = b["fatrow"]["train"]
        lines.append(f"| {r['config']['max_len']:,} | {len(run['epochs'])} | {run['best_epoch']} | "
                     + " | ".join(f"{run['test'][m]:.4f}" for m in METRICS)
                     + f" | {_speed(run)[0]:.1f} | {_mb(ours)} | {_mb(b['lateseq']['read_cache'])} | {_mb(fat)} | "
                     f"{fat / ours:.2f}× |")
    lines += [""] + [f"- {_made_by(r, n)}" for r, n in zip(rows, names)]
    return "\n".join(lines)


def long_range(name: str) -> str:
    r = json.loads((RESULTS / name).read_text())
    c = r["config"]
    lines = [_made_by(r, name), "",
             (f"{c['users']:,} training users ({c['users'] // 4:,} validation, {c['users'] // 4:,} test), "
              f"{c['history']:,} events each, {c['keys']} keys, {c['filler']} filler items, key burst of "
              f"{c['burst']}; HSTU with 1 layer, dim {c['dim']}, "
              f"{'with' if c.get('absolute_positions') else 'without'} absolute position embeddings, "
              f"{c['epochs']} epochs, batch {c['batch_size']}, lr {c['lr']}."), "",
             "| max length | key visible (test) | HR@10 | ideal HR@10 | NDCG@10 | MRR | best epoch | s/epoch |",
             "|---|---|---|---|---|---|---|---|"]
    for x in r["results"]:
        lines.append(f"| {x['max_len']:,} | {x['key_visible']:.3f} | {x['test']['hr@10']:.3f} | "
                     f"{x['ceiling_hr@10']:.3f} | {x['test']['ndcg@10']:.3f} | {x['test']['mrr']:.3f} | "
                     f"{x['best_epoch']} | {x['s_per_epoch']:.1f} |")
    return "\n".join(lines)


def gpu_train(name: str) -> str:
    r = json.loads((RESULTS / name).read_text())
    lines = [_made_by(r, name), "",
             "| max length | batch | events/example | examples/s | events/s | s/step | data wait | loader ex/s per worker |",
             "|---|---|---|---|---|---|---|---|"]
    for x in r["results"]:
        w = x["loader_examples_per_s_per_worker"]
        lines.append(f"| {x['max_len']:,} | {x['batch_size']} | {x['mean_events_per_example']:.0f} | "
                     f"{x['examples_per_s']:,.0f} | {x['events_per_s']:,.0f} | {x['s_per_step']:.3f} | "
                     f"{x['data_wait']:.1%} | {w:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    sections = [("ML-1M, max length 200", lambda: ml1m("hstu-ml1m-200.json"), ["hstu-ml1m-200.json"])]
    study = sorted(RESULTS.glob("hstu-ml1m-len-*.json"), key=lambda p: (len(p.stem), p.stem))
    if study:
        names = [p.name for p in study]
        sections.append(("history length study", lambda: lengths(names), names))
    sections += [("long-range study", lambda: long_range("long-range.json"), ["long-range.json"]),
                 ("long-range study, with absolute position embeddings",
                  lambda: long_range("long-range-absolute-positions.json"), ["long-range-absolute-positions.json"]),
                 ("training speed (gpu_train.py)", lambda: gpu_train("gpu-train-cpu-tiny.json"),
                  ["gpu-train-cpu-tiny.json"])]
    for title, render, needs in sections:
        if all((RESULTS / n).exists() for n in needs):
            print(f"### {title}\n\n{render()}\n")
        else:
            print(f"({title}: no results yet)\n", file=sys.stderr)


if __name__ == "__main__":
    main()
