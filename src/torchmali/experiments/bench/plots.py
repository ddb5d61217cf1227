"""The benchmark's plots: memory, time and gradient error against the number of steps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["PLOT_FILES", "plot"]

_MIB = 2.0**20
#: file name -> (record key, axis label, scale) of each figure.
_FIGURES = {
    "bench-memory.png": ("peak_memory_bytes", "peak memory above baseline (MiB)", _MIB),
    "bench-time.png": ("time_s", "forward + backward, median (s)", 1.0),
    "bench-grad-error.png": (
        "grad_rel_error_discrete",
        "gradient rel. error vs float64 direct, same grid",
        1.0,
    ),
    "bench-grad-error-continuous.png": (
        "grad_rel_error_continuous",
        "gradient rel. error vs float64 dopri5 (rtol 1e-10)",
        1.0,
    ),
}
PLOT_FILES = tuple(_FIGURES)
_FLOOR = 1e-17  # plotted in place of an exact zero on the log scale


def _line(rec: dict[str, Any]) -> tuple[str, str, str]:
    """(colour key, line label, style key) of a record."""
    key = f"{rec['library']} {rec['gradient']}"
    if rec["library"] != "torchmali":
        key += f" ({rec['peer_method']})" if rec.get("peer_method") else ""
    label = key
    if rec["mode"] == "adaptive":
        label += ", adaptive"
    if rec["dtype"] != "float32":
        label += f", {rec['dtype']}"
    style = "adaptive" if rec["mode"] == "adaptive" else rec["dtype"]
    return f"{rec['library']} {rec['gradient']}", label, style


def plot(records: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """Draw each metric against the accepted number of steps, log-log.

    One panel per solver (rows) and workload (columns), one line per library and gradient method
    (every method of the run, variants such as ``symplectic[checkpoints=8]`` included):
    torchmali solid, peers dashed, adaptive runs dotted (at their accepted step counts), float64
    runs dash-dotted. The colour of a library / gradient method is the same in every panel.

    Args:
        records: the benchmark records (only ``status == "ok"`` ones with a step count are drawn).
        out: the output directory.

    Returns:
        The PNG files written (:data:`PLOT_FILES`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r["status"] == "ok" and r["n_steps"]]
    workloads = list(dict.fromkeys(r["workload"] for r in ok)) or ["(none)"]
    methods = list(dict.fromkeys(r["method"] for r in ok)) or ["(none)"]
    colour_keys = sorted(
        {_line(r)[0] for r in ok}, key=lambda k: (not k.startswith("torchmali"), k)
    )
    palette = [*plt.get_cmap("tab10").colors, *plt.get_cmap("Dark2").colors]  # 18 colours
    colours = {k: palette[i % len(palette)] for i, k in enumerate(colour_keys)}
    styles = {"float32": "-", "float64": "-.", "adaptive": ":"}
    written = []
    for filename, (key, ylabel, scale) in _FIGURES.items():
        fig, axes = plt.subplots(
            len(methods),
            len(workloads),
            squeeze=False,
            figsize=(4.2 * len(workloads) + 3.2, 3.3 * len(methods)),
        )
        handles: dict[str, Any] = {}
        for i, method in enumerate(methods):
            for j, workload in enumerate(workloads):
                ax = axes[i][j]
                here = [
                    r
                    for r in ok
                    if r["method"] == method and r["workload"] == workload and r[key] is not None
                ]
                if not here:
                    ax.set_visible(False)
                    continue
                for label in sorted({_line(r)[1] for r in here}):
                    pts = sorted(
                        (r["n_steps"], r[key] / scale) for r in here if _line(r)[1] == label
                    )
                    rec = next(r for r in here if _line(r)[1] == label)
                    colour, _, style = _line(rec)
                    linestyle = styles[style]
                    if rec["library"] != "torchmali" and style == "float32":
                        linestyle = "--"
                    xs = [x for x, _ in pts]
                    ys = [max(y, _FLOOR) for _, y in pts]
                    (handle,) = ax.plot(
                        xs,
                        ys,
                        linestyle=linestyle,
                        marker="x" if style == "adaptive" else "o",
                        ms=4,
                        color=colours[colour],
                        label=label,
                    )
                    handles.setdefault(label, handle)
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_title(f"{workload}, {method}", fontsize=10)
                ax.set_xlabel("accepted steps", fontsize=8)
                ax.set_ylabel(ylabel, fontsize=8)
                ax.tick_params(labelsize=7)
                # Minor log ticks make drawing four times slower: mark the step counts that were
                # run, and widen the y range to whole decades so that it has labelled ticks.
                ax.minorticks_off()
                steps = sorted({r["n_steps"] for r in here})
                if len(steps) > 8:
                    steps = sorted({r["n_steps"] for r in here if r["mode"] == "fixed"})
                ax.set_xticks(steps, [str(n) for n in steps])
                lo, hi = ax.get_ylim()
                ax.set_ylim(10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi)))
                ax.grid(True, alpha=0.3)
        if handles:
            fig.legend(
                list(handles.values()),
                list(handles),
                loc="center left",
                bbox_to_anchor=(1.0, 0.5),
                fontsize=8,
                frameon=False,
            )
        fig.tight_layout()
        path = out / filename
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written
