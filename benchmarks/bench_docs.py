"""Refresh docs/benchmarks.md's figures and print its tables from one ``torchmali bench`` run.

Usage::

    torchmali bench --out results/bench-docs
    python benchmarks/bench_docs.py results/bench-docs > /tmp/tables.md

copies the run's PNGs to ``docs/figures/`` and prints the machine line, the targets, the
torchmali / peer ratios, the dissipative workloads' table and the per-workload tables (largest step
count and adaptive runs) in markdown, to paste into ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from torchmali.experiments.bench.plots import PLOT_FILES
from torchmali.experiments.bench.report import dissipative_tables, ratios, summary_tables
from torchmali.experiments.bench.targets import targets, targets_table
from torchmali.experiments.bench.workloads import WORKLOADS

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the --out directory of a torchmali bench run")
    args = parser.parse_args()
    records = json.loads((args.run / "results.json").read_text())
    meta = json.loads((args.run / "meta.json").read_text())
    figures = ROOT / "docs" / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for name in PLOT_FILES:
        shutil.copyfile(args.run / name, figures / name)
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
    print(
        f"`{meta['command']}` on {meta['cpu']} ({meta['cpu_count']} cores, {meta['device']}, "
        f"{meta['torch_threads']} torch thread per configuration), {meta['platform']}, Python "
        f"{meta['python']}, {versions}, commit {meta.get('git_commit')}; {meta['date']}, "
        f"{meta['duration_s']} s.\n"
    )
    print("## Targets\n\n" + targets_table(targets(records)) + "\n")
    print("## torchmali / peer ratios\n\n" + ratios(records) + "\n")
    dissipative = [name for name, w in WORKLOADS.items() if w.dissipative]
    print("## Dissipative workloads\n\n" + dissipative_tables(records, dissipative) + "\n")
    print("## Results\n\n" + summary_tables(records, largest_only=True))


if __name__ == "__main__":
    main()
