"""Print the markdown tables of docs/experiments.md from the runs' metrics.json files.

Usage: python benchmarks/experiments_table.py [RESULTS_DIR]   (default results/train)

Every run directory ``TASK-GRADIENT`` (or ``TASK-GRADIENT-seedS``) written by
``torchmali train TASK --gradient GRADIENT --out DIR`` becomes one row. Runs that differ only in
their ``-seedS`` suffix are also summarised per gradient method: the metric of every seed, its
mean, standard deviation and median.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

METRICS = {
    "image": ["test_accuracy"],
    "timeseries": ["test_mse_interp", "test_mse_extrap"],
    "density": ["test_nll", "test_bits_per_dim"],
}


def rows(results: Path):
    for path in sorted(results.glob("*/metrics.json")):
        m = json.loads(path.read_text())
        yield path.parent.name, m


def fmt(value, key: str) -> str:
    if value is None:
        return "—"
    if key == "test_accuracy":
        return f"{100 * value:.1f}%"
    return f"{value:.4g}"


def main(argv: list[str]) -> int:
    results = Path(argv[1] if len(argv) > 1 else "results/train")
    by_task: dict[str, list] = {}
    for name, m in rows(results):
        by_task.setdefault(m["task"], []).append((name, m))
    for task, runs in by_task.items():
        keys = [k for k in METRICS[task] if any(k in m["final"] for _, m in runs)]
        head = [
            "run",
            "gradient",
            *keys,
            "epochs",
            "CPU s / epoch",
            "wall s / epoch",
            "peak RSS (MiB)",
            "solver memory (KiB)",
            "NFE fwd + bwd / batch",
        ]
        print(f"\n### {task}\n")
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for name, m in runs:
            f = m["final"]
            done = len(m["epochs"])
            total = m["config"].get("epochs", done)
            epochs = (
                str(done) if m.get("complete", done == total) else f"{done} of {total} (unfinished)"
            )
            cells = [
                name,
                f"`{m['config'].get('gradient')}`",
                *(fmt(f.get(k), k) for k in keys),
                epochs,
                f"{f.get('cpu_time_per_epoch_s', float('nan')):.2f}",
                f"{f.get('time_per_epoch_s', float('nan')):.1f}",
                f"{f.get('peak_memory_mb', float('nan')):.0f}",
                f"{f.get('solver_memory_bytes', 0) / 1024:.0f}",
                f"{f.get('nfe_forward_per_batch', 0):.0f} + {f.get('nfe_backward_per_batch', 0):.0f}",
            ]
            print("| " + " | ".join(cells) + " |")
        seed_summary(task, runs)
    return 0


def seed_summary(task: str, runs: list) -> None:
    """Per ``(run prefix, gradient)`` with two or more seeds: the main metric over the seeds."""
    key = METRICS[task][-1] if task == "timeseries" else METRICS[task][0]
    groups: dict[str, list[tuple[int, float]]] = {}
    for name, m in runs:
        match = re.fullmatch(r"(.+)-seed(\d+)", name)
        value = m["final"].get(key)
        if match and value is not None:
            groups.setdefault(match.group(1), []).append((int(match.group(2)), value))
    groups = {g: sorted(v) for g, v in groups.items() if len(v) >= 2}
    if not groups:
        return
    print(f"\n{key} over seeds:\n")
    print("| runs | seeds | per seed | mean | std | median |")
    print("|---|---|---|---|---|---|")
    for group, values in sorted(groups.items()):
        xs = [v for _, v in values]
        print(
            f"| {group}-seedS | {', '.join(str(s) for s, _ in values)} | "
            f"{' / '.join(fmt(x, key) for x in xs)} | {fmt(statistics.mean(xs), key)} | "
            f"{fmt(statistics.stdev(xs), key)} | {fmt(statistics.median(xs), key)} |"
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv))
