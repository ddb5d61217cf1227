"""Writing the benchmark's results: JSON, CSV, the summary tables and the time ratios (the targets
are in :mod:`~torchmali.experiments.bench.targets`)."""

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
    "dissipative_tables",
    "floor_ratio",
    "make_record",
    "ratios",
    "reported",
    "summary_tables",
    "time_ratio",
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
    "vjp_backward",
    "grad_rel_error_discrete",
    "grad_rel_error_continuous",
    "grad_rel_error_direct",
    "forward_rel_error_continuous",
    "warnings",
    "cpu_time_s",
    "forward_time_s",
    "memory_method",
    "peer_method",
    "reported_memory_bytes",
    "reported_nfe_forward",
    "reported_nfe_backward",
    "drift",
    "parasitic",
    "recomputed_steps",
    "stats",
    "repeats",
    "seed",
    "threads",
    "load_avg_1min",
    "duration_s",
    "time_s_repeats",
    "forward_time_s_repeats",
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
                {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in rec.items()}
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
        recs.sort(key=_order)
        rows = [
            [
                r["library"],
                r["gradient"],
                r["method"],
                _size(r),
                _fmt(r["time_s"], "time"),
                _fmt(r["peak_memory_bytes"], "mib"),
                f"{r['nfe_forward']}/{r['nfe_backward']}",
                _fmt(r.get("vjp_backward"), "int"),
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
            "VJPs",
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


def floor_ratio(mine: dict[str, Any], direct: dict[str, Any]) -> float | None:
    """``mine``'s time over its floor, direct backprop plus one forward sweep without graph: the
    median over rounds of ``mine / (direct + forward)`` when the three were timed in the same
    rounds (``forward_time_s_repeats``, see :mod:`~torchmali.experiments.bench.timing`);
    otherwise the ratio of the medians; ``None`` when the forward sweep was not timed."""
    fwd = mine.get("forward_time_s_repeats") or []
    a, b = mine.get("time_s_repeats") or [], direct.get("time_s_repeats") or []
    k = min(len(a), len(b), len(fwd))
    if k:
        return statistics.median(x / (y + z) for x, y, z in zip(a[:k], b[:k], fwd[:k], strict=True))
    if mine.get("forward_time_s") is None:
        return None
    return mine["time_s"] / (direct["time_s"] + mine["forward_time_s"])


def dissipative_tables(records: Sequence[dict[str, Any]], dissipative: Sequence[str]) -> str:
    """Markdown tables of the runs on the ``dissipative`` workloads: how far the forward solution
    and the gradient are from the exact ODE's, how far the gradient is from direct backprop on the
    same grid, and what the method reported (warnings, an error, its consistency statistics)."""
    blocks = []
    for workload in dissipative:
        recs = [r for r in records if r["workload"] == workload and r["status"] != "skipped"]
        if not recs:
            continue
        recs.sort(key=_order)
        rows = [
            [
                r["library"],
                r["gradient"],
                r["method"],
                _size(r),
                r["dtype"],
                _fmt(r.get("forward_rel_error_continuous"), "err"),
                _fmt(r.get("grad_rel_error_continuous"), "err"),
                _fmt(r.get("grad_rel_error_direct"), "err"),
                _fmt(r.get("parasitic"), "err"),
                _fmt(r.get("drift"), "err"),
                reported(r) or "-",
            ]
            for r in recs
        ]
        header = [
            "library",
            "gradient",
            "solver",
            "steps",
            "dtype",
            "forward err vs exact ODE",
            "grad err vs exact ODE",
            "grad err vs direct, same grid",
            "parasitic",
            "drift",
            "reported",
        ]
        blocks.append(f"### {workload}\n\n" + _table(header, rows))
    return "\n\n".join(blocks)


def reported(rec: dict[str, Any]) -> str:
    """What a run reported about its own accuracy: the warnings' categories, or the error."""
    if rec["status"] == "error":
        return f"raised {rec.get('note') or 'an error'}"[:120]
    cats = dict.fromkeys(w.split(":", 1)[0] for w in rec.get("warnings") or [])
    return ", ".join(cats)


def _size(rec: dict[str, Any]) -> str:
    return _steps(rec) if rec["mode"] == "fixed" else f"{rec['n_steps']} (rtol {rec['rtol']:g})"


def _order(r: dict[str, Any]) -> tuple:
    return (
        r["mode"] == "adaptive",
        r["method"],
        -(r["rtol"] or 0),
        r["n_steps_requested"] or 0,
        r["library"] != "torchmali",
        r["library"],
        r["gradient"],
    )


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
