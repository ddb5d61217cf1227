"""Writing the benchmark's results: JSON, CSV, plots, the summary tables, ratios and targets."""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .plan import Case

__all__ = [
    "RECORD_KEYS",
    "make_record",
    "ratios",
    "summary_tables",
    "targets",
    "write_results",
]

#: Every record has these keys, in this order (``None`` where not applicable).
RECORD_KEYS = (
    "library",
    "gradient",
    "method",
    "workload",
    "mode",
    "n_steps",
    "n_steps_requested",
    "rtol",
    "atol",
    "dtype",
    "device",
    "status",
    "note",
    "time_s",
    "peak_memory_bytes",
    "nfe_forward",
    "nfe_backward",
    "grad_rel_error_discrete",
    "grad_rel_error_continuous",
    "grad_rel_error_direct",
    "cpu_time_s",
    "memory_method",
    "peer_method",
    "reported_memory_bytes",
    "reported_nfe_forward",
    "reported_nfe_backward",
    "drift",
    "recomputed_steps",
    "repeats",
    "seed",
    "threads",
    "load_avg_1min",
    "duration_s",
    "time_s_repeats",
)
_MIB = 2.0**20


def make_record(case: Case, result: dict[str, Any]) -> dict[str, Any]:
    """A complete record: the case's fields, overwritten by the worker's result."""
    record = {key: None for key in RECORD_KEYS}
    record.update(case.to_dict())
    record["mode"] = case.mode
    record["n_steps_requested"] = case.n_steps
    record.update({k: v for k, v in result.items() if k != "traceback"})
    return record


def write_results(records: Sequence[dict[str, Any]], out: Path) -> None:
    """Write ``results.json`` (a list of records) and ``results.csv`` (the same, one row each)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(list(records), indent=1) + "\n")
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=RECORD_KEYS, extrasaction="ignore")
        writer.writeheader()
        for rec in records:
            writer.writerow(
                {k: json.dumps(v) if isinstance(v, list) else v for k, v in rec.items()}
            )


def _ok(records: Iterable[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [
        r for r in records if r["status"] == "ok" and all(r.get(k) == v for k, v in match.items())
    ]


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "mib":
        return f"{value / _MIB:.1f}"
    if kind == "time":
        return f"{value:.3f}"
    if kind == "err":
        return f"{value:.1e}"
    if kind == "ratio":
        return f"{value:.2f}"
    return str(value)


def _steps(rec: dict[str, Any]) -> str:
    """The fixed grid's step count, and the accepted one where the library took others."""
    n, accepted = rec["n_steps_requested"], rec["n_steps"]
    return str(n) if accepted in (None, n) else f"{n} ({accepted} taken)"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summary_tables(records: Sequence[dict[str, Any]], largest_only: bool = False) -> str:
    """Markdown tables of every measured configuration, one per workload and dtype.

    Args:
        records: the records.
        largest_only: keep only the largest fixed step count (plus the adaptive runs).
    """
    blocks = []
    groups = dict.fromkeys((r["workload"], r["dtype"]) for r in records if r["status"] == "ok")
    for workload, dtype in groups:
        recs = _ok(records, workload=workload, dtype=dtype)
        if largest_only:  # per solver: its largest fixed grid, and every adaptive run
            nmax: dict[str, int] = {}
            for r in recs:
                if r["mode"] == "fixed":
                    nmax[r["method"]] = max(nmax.get(r["method"], 0), r["n_steps_requested"])
            recs = [
                r
                for r in recs
                if r["mode"] == "adaptive" or r["n_steps_requested"] == nmax[r["method"]]
            ]
        recs.sort(
            key=lambda r: (
                r["mode"] == "adaptive",
                r["method"],
                -(r["rtol"] or 0),
                r["n_steps_requested"] or 0,
                r["library"] != "torchmali",
                r["library"],
                r["gradient"],
            )
        )
        rows = [
            [
                r["library"],
                r["gradient"],
                r["method"],
                _steps(r) if r["mode"] == "fixed" else f"{r['n_steps']} (rtol {r['rtol']:g})",
                _fmt(r["time_s"], "time"),
                _fmt(r["peak_memory_bytes"], "mib"),
                f"{r['nfe_forward']}/{r['nfe_backward']}",
                _fmt(r["grad_rel_error_discrete"], "err"),
                _fmt(r["grad_rel_error_direct"], "err"),
                _fmt(r["grad_rel_error_continuous"], "err"),
            ]
            for r in recs
        ]
        header = [
            "library",
            "gradient",
            "solver",
            "steps",
            "time (s)",
            "peak MiB",
            "nfe f/b",
            "err vs f64 direct",
            f"err vs {dtype} direct",
            "err vs exact ODE",
        ]
        blocks.append(f"### {workload}, {dtype}\n\n" + _table(header, rows))
    return "\n\n".join(blocks)


def time_ratio(mine: dict[str, Any], ref: dict[str, Any]) -> float:
    """``mine``'s time over ``ref``'s: the median of the per-round ratios when both were timed in
    the same rounds (one group, see :mod:`~torchmali.experiments.bench.timing`).

    Every round times each configuration of a group back to back, and the first repeats of any two
    of them come from the same rounds, so pairing them cancels whatever slowed the machine during
    a round; otherwise, the ratio of the medians.
    """
    a, b = mine.get("time_s_repeats") or [], ref.get("time_s_repeats") or []
    k = min(len(a), len(b))
    if k == 0:
        return mine["time_s"] / ref["time_s"]
    return statistics.median(x / y for x, y in zip(a[:k], b[:k], strict=True))


def ratios(records: Sequence[dict[str, Any]]) -> str:
    """A markdown table of torchmali / peer ratios of time and memory, from the same run, for the
    same workload, solver, grid (or tolerance) and dtype."""
    rows = []
    for mine in _ok(records, library="torchmali"):
        size = (
            {"n_steps_requested": mine["n_steps_requested"]}
            if mine["mode"] == "fixed"
            else {"rtol": mine["rtol"]}
        )
        for peer in _ok(
            records,
            gradient=mine["gradient"],
            method=mine["method"],
            workload=mine["workload"],
            dtype=mine["dtype"],
            mode=mine["mode"],
            **size,
        ):
            if peer["library"] == "torchmali":
                continue
            ratio = time_ratio(mine, peer)
            mem_ratio = (
                mine["peak_memory_bytes"] / peer["peak_memory_bytes"]
                if peer["peak_memory_bytes"]
                else None
            )
            steps = _steps(mine) if mine["mode"] == "fixed" else f"rtol {mine['rtol']:g}"
            rows.append(
                [
                    mine["workload"],
                    mine["dtype"],
                    mine["method"],
                    steps,
                    f"{mine['gradient']} / {peer['library']} {peer['peer_method']}",
                    _fmt(ratio, "ratio"),
                    _fmt(mem_ratio, "ratio"),
                ]
            )
    if not rows:
        return "(no peer ran)"
    header = ["workload", "dtype", "solver", "steps", "torchmali / peer", "time", "memory"]
    return _table(header, rows)


def _fixed(records: Sequence[dict[str, Any]], **match: Any) -> dict[tuple, dict[str, Any]]:
    return {(r["workload"], r["n_steps_requested"]): r for r in _ok(records, mode="fixed", **match)}


def _linear_fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``: the slope ``b`` and the largest relative deviation."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    a = my - b * mx
    return b, max(abs(y - (a + b * x)) / max(abs(y), 1e-30) for x, y in points)


def targets(records: Sequence[dict[str, Any]]) -> list[tuple[str, str, bool | None]]:
    """Check the issue's targets on the fixed-grid runs.

    Returns:
        ``(target, what was measured, passed)`` rows; ``passed`` is ``None`` when nothing
        could be measured.
    """
    out: list[tuple[str, str, bool | None]] = []
    mali = _fixed(records, library="torchmali", gradient="mali", method="alf", dtype="float32")
    direct = _fixed(records, library="torchmali", gradient="direct", method="alf", dtype="float32")
    tdep = _fixed(
        records, library="torchdiffeqpack", gradient="mali", method="alf", dtype="float32"
    )
    for workload in dict.fromkeys(w for w, _ in mali):
        ns = sorted(n for w, n in mali if w == workload)
        lo, hi = mali[(workload, ns[0])], mali[(workload, ns[-1])]  # by requested step count
        growth = hi["peak_memory_bytes"] / max(lo["peak_memory_bytes"], 1) - 1
        out.append(
            (
                f"{workload}: mali memory flat (n={ns[-1]} within 10% of n={ns[0]})",
                f"{lo['peak_memory_bytes'] / _MIB:.2f} -> {hi['peak_memory_bytes'] / _MIB:.2f}"
                f" MiB ({growth:+.1%})",
                len(ns) > 1 and growth <= 0.10,
            )
        )
        pts = [
            (n, direct[(workload, n)]["peak_memory_bytes"]) for n in ns if (workload, n) in direct
        ]
        if len(pts) >= 2:
            slope, residual = _linear_fit(pts)
            out.append(
                (
                    f"{workload}: direct memory grows linearly",
                    f"{pts[0][1] / _MIB:.1f} -> {pts[-1][1] / _MIB:.1f} MiB: "
                    f"{slope / 1024:.0f} KiB per step, largest deviation from the line "
                    f"{residual:.0%} ({len(pts)} step counts)",
                    slope > 0 and residual <= 0.10,
                )
            )
        for name, ref, bound in (("direct", direct, 1.4), ("TorchDiffEqPack MALI", tdep, 0.8)):
            for n in ns:
                if (workload, n) not in ref:
                    continue
                a, b = mali[(workload, n)], ref[(workload, n)]
                ratio = time_ratio(a, b)
                out.append(
                    (
                        f"{workload} n={n}: mali time <= {bound}x {name}",
                        f"{a['time_s']:.3f} s vs {b['time_s']:.3f} s ({ratio:.2f}x)",
                        ratio <= bound,
                    )
                )
    for dtype, bound in (("float32", 1e-6), ("float64", 1e-10)):
        fixed = _ok(records, library="torchmali", dtype=dtype, mode="fixed")
        floor = [r["grad_rel_error_discrete"] for r in fixed if r["gradient"] == "direct"]
        floor_text = f"; {dtype} direct backprop itself: max {max(floor):.1e}" if floor else ""
        for gradient in ("mali", "checkpoint", "binomial"):
            mine = [r for r in fixed if r["gradient"] == gradient]
            for key, what in (("discrete", "vs float64 direct"), ("direct", f"vs {dtype} direct")):
                errs = [r[f"grad_rel_error_{key}"] for r in mine]
                errs = [e for e in errs if e is not None]
                if not errs or (key == "direct" and dtype == "float64"):
                    continue
                worst = max(range(len(errs)), key=errs.__getitem__)
                measured = f"max {errs[worst]:.1e} (n={mine[worst]['n_steps']}, {len(errs)} runs)"
                out.append(
                    (
                        f"{gradient} gradient error {what}, same grid <= {bound:g}",
                        measured + (floor_text if key == "discrete" else ""),
                        errs[worst] <= bound,
                    )
                )
    aca = _fixed(records, library="torchdiffeqpack", gradient="checkpoint", dtype="float32")
    for (workload, n), peer in aca.items():
        mine = _ok(
            records,
            library="torchmali",
            gradient="checkpoint",
            method=peer["method"],
            workload=workload,
            n_steps_requested=n,
            dtype="float32",
            mode="fixed",
        )
        if mine and peer["peak_memory_bytes"]:
            q = mine[0]["peak_memory_bytes"] / peer["peak_memory_bytes"]
            out.append(
                (
                    f"{workload} n={n}: checkpoint memory <= TorchDiffEqPack ACA",
                    f"{mine[0]['peak_memory_bytes'] / _MIB:.1f} vs "
                    f"{peer['peak_memory_bytes'] / _MIB:.1f} MiB ({q:.2f}x)",
                    q <= 1.0,
                )
            )
    return out


def targets_table(rows: Sequence[tuple[str, str, bool | None]]) -> str:
    """The targets as a markdown table."""
    verdict = {True: "PASS", False: "FAIL", None: "-"}
    return _table(["target", "measured", ""], [[t, m, verdict[p]] for t, m, p in rows])
