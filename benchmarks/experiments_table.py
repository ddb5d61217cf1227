"""Print the markdown tables of docs/experiments.md from the runs' metrics.json files.

Usage: python benchmarks/experiments_table.py [RESULTS_DIR] [--figures DIR]

``RESULTS_DIR`` defaults to ``results/train``. ``--figures docs/figures`` also copies the MALI
runs' figures there (see :data:`FIGURES`) and draws the grid of the 2-D toy densities.

Every run directory (``NAME-GRADIENT`` or ``NAME-GRADIENT-seedS``, as written by
``benchmarks/run_experiments.py``) becomes one row of its task and data set's table. Runs that
differ only in their ``-seedS`` suffix are also summarised per gradient method: the main metric
of every seed, its mean, standard deviation and median, and the mean cost per epoch.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
from pathlib import Path

METRICS = {
    "image": ["test_accuracy"],
    "timeseries": ["test_mse_interp", "test_mse_extrap"],
    "density": ["test_nll", "test_bits_per_dim", "test_density_mass"],
}


# docs/figures name -> the run directory and file it is copied from
FIGURES = {
    "image-digits-mali-curves.png": ("image-mali", "learning_curves.png"),
    "timeseries-spirals-mali.png": ("timeseries-mali-seed0", "reconstructions.png"),
    "timeseries-membrane-mali.png": ("membrane-mali-seed0", "reconstructions.png"),
    "density-8gaussians-mali.png": ("density-mali", "density.png"),
    "density-digits-mali-samples.png": ("density_digits-mali", "samples.png"),
}
TOY_RUNS = {
    "8 Gaussians": "density-mali",
    "pinwheel": "density_pinwheel-mali",
    "checkerboard": "density_checkerboard-mali",
    "two spirals": "density_2spirals-mali",
    "moons": "density_moons-mali",
}


def copy_figures(results: Path, dest: Path) -> None:
    """Copy :data:`FIGURES` to ``dest`` and draw ``density-toys-mali.png`` from the toy runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dest.mkdir(parents=True, exist_ok=True)
    for name, (run, file) in FIGURES.items():
        if (results / run / file).exists():
            shutil.copyfile(results / run / file, dest / name)
            print(f"copied {results / run / file} -> {dest / name}", file=sys.stderr)
    toys = {k: results / r / "density.png" for k, r in TOY_RUNS.items()}
    toys = {k: p for k, p in toys.items() if p.exists()}
    if not toys:
        return
    fig, axes = plt.subplots(len(toys), 1, figsize=(7.2, 2.6 * len(toys)), squeeze=False)
    for ax, (label, path) in zip(axes[:, 0], toys.items(), strict=True):
        ax.imshow(plt.imread(path))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label)
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.tight_layout()
    fig.savefig(dest / "density-toys-mali.png", dpi=100)
    plt.close(fig)
    print(f"drew {dest / 'density-toys-mali.png'}", file=sys.stderr)


def rows(results: Path):
    for path in sorted(results.glob("*/metrics.json")):
        m = json.loads(path.read_text())
        yield path.parent.name, m


def fmt(value, key: str) -> str:
    if value is None:
        return "—"
    if key == "test_accuracy":
        return f"{100 * value:.1f}%"
    if key in ("test_nll", "test_bits_per_dim"):
        return f"{value:.4f}"
    return f"{value:.4g}"


def dataset(m: dict) -> str:
    """The data set of a run: its ``--dataset``, or for images digits / CIFAR-10."""
    c = m["config"]
    return c.get("dataset") or ("cifar10" if c.get("data") else "digits")


def gradient_label(config: dict) -> str:
    """The gradient method of a run, with MALI's ``checkpoint_every`` when it was set and the
    solver when it is not ALF."""
    k = config.get("mali_checkpoint_every")
    label = f"`{config.get('gradient')}`" + (f", K = {k}" if k else "")
    method = config.get("method")
    return label + (f", {method}" if method and method != "alf" else "")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, nargs="?", default=Path("results/train"))
    p.add_argument("--figures", type=Path, default=None, help="copy the figures here")
    a = p.parse_args(argv[1:])
    results = a.results
    if a.figures is not None:
        copy_figures(results, a.figures)
    groups: dict[tuple[str, str], list] = {}
    for name, m in rows(results):
        groups.setdefault((m["task"], dataset(m)), []).append((name, m))
    for (task, data), runs in groups.items():
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
        print(f"\n### {task}: {data}\n")
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
                gradient_label(m["config"]),
                *(fmt(f.get(k), k) for k in keys),
                epochs,
                f"{f.get('cpu_time_per_epoch_s', float('nan')):.2f}",
                f"{f.get('time_per_epoch_s', float('nan')):.1f}",
                f"{f.get('peak_memory_mb', float('nan')):.0f}",
                f"{f.get('solver_memory_bytes', 0) / 1024:.0f}",
                f"{f.get('nfe_forward_per_batch', 0):.0f} + {f.get('nfe_backward_per_batch', 0):.0f}",
            ]
            print("| " + " | ".join(cells) + " |")
        seed_summary(runs)
    return 0


def seed_summary(runs: list) -> None:
    """Per ``(run prefix, gradient)`` with two or more seeds: the main metric over the seeds."""
    key = runs[0][1]["metric"]
    groups: dict[str, list[tuple[int, dict]]] = {}
    for name, m in runs:
        match = re.fullmatch(r"(.+)-seed(\d+)", name)
        if match and m["final"].get(key) is not None:
            groups.setdefault(match.group(1), []).append((int(match.group(2)), m["final"]))
    groups = {g: sorted(v, key=lambda sv: sv[0]) for g, v in groups.items() if len(v) >= 2}
    if not groups:
        return
    print(f"\n{key} over seeds:\n")
    print("| runs | seeds | per seed | mean | std | median | CPU s / epoch | NFE bwd / batch |")
    print("|---|---|---|---|---|---|---|---|")
    ordered = sorted(groups.items())
    for group, values in ordered:
        xs = [f[key] for _, f in values]
        cpu = statistics.mean(f["cpu_time_per_epoch_s"] for _, f in values)
        nfe = statistics.mean(f["nfe_backward_per_batch"] for _, f in values)
        print(
            f"| {group}-seedS | {', '.join(str(s) for s, _ in values)} | "
            f"{' / '.join(fmt(x, key) for x in xs)} | {fmt(statistics.mean(xs), key)} | "
            f"{fmt(statistics.stdev(xs), key)} | {fmt(statistics.median(xs), key)} | "
            f"{cpu:.2f} | {nfe:.0f} |"
        )
    paired_summary(key, {g: {seed: f[key] for seed, f in v} for g, v in ordered})


def paired_summary(key: str, groups: dict[str, dict[int, float]]) -> None:
    """Every two gradient methods of one experiment, paired by seed: how often the first is
    better, the median and mean differences, and a Wilcoxon signed-rank test (scipy)."""
    from scipy.stats import wilcoxon

    by_prefix: dict[str, dict[str, dict[int, float]]] = {}
    for name, values in groups.items():
        prefix, _, method = name.rpartition("-")
        by_prefix.setdefault(prefix, {})[method] = values
    better = max if key == "test_accuracy" else min
    for prefix, methods in sorted(by_prefix.items()):
        names = sorted(methods, key=lambda m: (m != "mali", m))  # MALI first
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                seeds = sorted(set(methods[a]) & set(methods[b]))
                if len(seeds) < 2:
                    continue
                xa, xb = [methods[a][s] for s in seeds], [methods[b][s] for s in seeds]
                diff = [u - v for u, v in zip(xa, xb, strict=True)]
                wins = sum(better(u, v) == u and u != v for u, v in zip(xa, xb, strict=True))
                p = wilcoxon(xa, xb).pvalue if any(diff) else 1.0
                print(
                    f"\n{prefix}: {a} vs {b}, paired by seed: {a} better on {wins} of "
                    f"{len(seeds)} seeds; difference ({a} - {b}) median "
                    f"{fmt(statistics.median(diff), key)}, mean {fmt(statistics.mean(diff), key)}; "
                    f"Wilcoxon signed-rank p = {p:.2g}"
                )


if __name__ == "__main__":
    sys.exit(main(sys.argv))
