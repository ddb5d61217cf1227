"""The benchmark's targets (issue 12.5), checked on the records of one run.

Every target is evaluated from the configurations of the run itself (``--quick`` included), and
every time ratio from configurations timed in the same rounds of one process:

* **memory** — a method that needs a reversible solver (``mali``) keeps a flat peak memory over the
  step counts unless it stored checkpoints by design (then it is reported, not judged); ``direct``
  grows linearly; torchmali's ``checkpoint`` needs no more than TorchDiffEqPack's ACA.
* **time** — each reversible method (every method with ``needs_reversible``, with every reversible
  solver) within :data:`FLOOR_BOUND` of its measured floor, direct backprop plus one forward
  sweep without graph of the same solve (:func:`~torchmali.experiments.bench.report.floor_ratio`);
  ``mali`` within :data:`PEER_MALI_BOUND` of TorchDiffEqPack's MALI; ``symplectic`` within
  :data:`SYMPLECTIC_TIME_BOUND` of direct backprop, at a peak memory no larger than
  ``checkpoint``'s (the measured peak, not ``memory_bytes``, which counts the states a method
  stores but not the graph it rebuilds). Memory comparisons allow :data:`MEMORY_SLACK`, the
  measurement's floor.
* **gradient error** — every exact method against direct backprop in its own dtype on the same grid
  (float32: ``<= 1e-6``; float64: ``<= 1e-10``), and in float32 against float64 direct backprop
  only *relative to float32 direct backprop's own error there*: at most
  ``max(2 e, e + 2^-23)`` with ``e`` float32 direct's error. Against float64 every float32 method,
  direct backprop included, carries the random walk of one rounding of the state per step
  (``sqrt(N) 2^-24``: 1.9e-6 at N = 1000), so no absolute bound can hold; what a method can be
  asked is not to add to it. The method's own deviation from float32 direct and that error add at
  most linearly, so ``2 e`` allows a deviation as large as float32's own error (one bit), and
  ``e + 2^-23`` (two units of float32 round-off) covers short grids where ``e`` is itself a few
  units of round-off and the ratio is noise.
* **dissipative workloads** — every exact memory-efficient torchmali run either is faithful
  (forward solution and gradient within :data:`FAITHFUL` of the exact ODE's, gradient within the
  dtype's bound of direct backprop on the same grid) or reports its failure (a warning or an
  error): ALF's parasitic mode makes MALI's *forward* solution wrong there, which it must say.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .plan import gradient_class
from .report import _fmt, _ok, _steps, floor_ratio, reported, time_ratio
from .workloads import WORKLOADS

__all__ = [
    "FAITHFUL",
    "FLOAT32_SLACK",
    "FLOOR_BOUND",
    "MEMORY_SLACK",
    "PEER_MALI_BOUND",
    "SYMPLECTIC_TIME_BOUND",
    "targets",
    "targets_table",
]

Row = tuple[str, str, "bool | None"]
_MIB = 2.0**20
#: A reversible method's time over its floor (direct + one no-grad forward sweep).
FLOOR_BOUND = 1.05
#: torchmali's MALI over TorchDiffEqPack's on the same grid.
PEER_MALI_BOUND = 0.8
#: ``symplectic``'s time over direct backprop's.
SYMPLECTIC_TIME_BOUND = 1.8
#: Largest growth of a flat memory from the smallest to the largest step count.
FLAT_GROWTH = 0.10
#: Exact methods against direct backprop in the same dtype on the same grid.
EXACT_BOUND = {"float32": 1e-6, "float64": 1e-10}
#: Float32 against float64: at most ``max(FLOAT32_FACTOR e, e + FLOAT32_SLACK)``, ``e`` float32
#: direct backprop's own error.
FLOAT32_FACTOR, FLOAT32_SLACK = 2.0, 2.0**-23
#: Dissipative workloads: relative error against the exact ODE above which a run is not faithful.
FAITHFUL = 1e-2
#: Memory comparisons ("a <= b") allow the measurement's floor: some hundred KiB of interpreter
#: objects that come and go with the call (see measure.py), not the method's.
MEMORY_SLACK = 256 * 1024


def targets(records: Sequence[dict[str, Any]]) -> list[Row]:
    """Check the targets (see the module docstring) on ``records``.

    Returns:
        ``(target, what was measured, passed)`` rows; ``passed`` is ``None`` for a measurement
        reported without a verdict.
    """
    return [
        *_memory(records),
        *_reversible_time(records),
        *_symplectic(records),
        *_errors(records),
        *_dissipative(records),
        *_peer_memory(records),
    ]


def targets_table(rows: Sequence[Row]) -> str:
    """The targets as a markdown table."""
    verdict = {True: "PASS", False: "FAIL", None: "-"}
    lines = ["| target | measured |  |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {verdict[p]} |" for t, m, p in rows]
    return "\n".join(lines)


def _dissipative_workload(name: str) -> bool:
    workload = WORKLOADS.get(name)
    return workload is not None and workload.dissipative


def _attr(gradient: str, key: str) -> bool:
    cls = gradient_class(gradient)
    return bool(cls is not None and getattr(cls, key))


def _mine(records: Iterable[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return _ok(records, library="torchmali", **match)


def _group(rec: dict[str, Any]) -> tuple:
    """The records timed in the same rounds (timing.group_key) and compared with each other."""
    return (rec["workload"], rec["method"], rec["mode"], rec["n_steps_requested"], rec["rtol"],
            rec["dtype"], rec.get("device"))  # fmt: skip


def _partner(records: Sequence[dict[str, Any]], rec: dict[str, Any], **match: Any):
    for r in _ok(records, **match):
        if _group(r) == _group(rec):
            return r
    return None


def _memory(records: Sequence[dict[str, Any]]) -> list[Row]:
    out: list[Row] = []
    reversible = [
        r for r in _mine(records, mode="fixed", dtype="float32")
        if _attr(r["gradient"], "needs_reversible") and not _dissipative_workload(r["workload"])
    ]  # fmt: skip
    for workload, solver, gradient in dict.fromkeys(
        (r["workload"], r["method"], r["gradient"]) for r in reversible
    ):
        recs = {
            r["n_steps_requested"]: r
            for r in reversible
            if (r["workload"], r["method"], r["gradient"]) == (workload, solver, gradient)
        }
        ns = sorted(recs)
        if len(ns) < 2:
            continue
        lo, hi = recs[ns[0]], recs[ns[-1]]
        growth = hi["peak_memory_bytes"] / max(lo["peak_memory_bytes"], 1) - 1
        measured = (
            f"{lo['peak_memory_bytes'] / _MIB:.2f} -> {hi['peak_memory_bytes'] / _MIB:.2f}"
            f" MiB ({growth:+.1%})"
        )
        interval = (hi.get("stats") or {}).get("checkpoint_interval")
        verdict = growth <= FLAT_GROWTH
        if interval:
            measured += f"; stores a point every {interval} steps: O(N/{interval}) by design"
            verdict = None
        out.append(
            (
                f"{workload} {solver}: {gradient} memory flat (n={ns[-1]} within "
                f"{FLAT_GROWTH:.0%} of n={ns[0]})",
                measured,
                verdict,
            )
        )
        direct = {
            r["n_steps_requested"]: r["peak_memory_bytes"]
            for r in _mine(records, mode="fixed", dtype="float32", gradient="direct")
            if (r["workload"], r["method"]) == (workload, solver)
        }
        pts = sorted((n, direct[n]) for n in ns if n in direct)
        if len(pts) >= 2:
            slope, residual = _linear_fit(pts)
            out.append(
                (
                    f"{workload} {solver}: direct memory grows linearly",
                    f"{pts[0][1] / _MIB:.1f} -> {pts[-1][1] / _MIB:.1f} MiB: "
                    f"{slope / 1024:.0f} KiB per step, largest deviation from the line "
                    f"{residual:.0%} ({len(pts)} step counts)",
                    slope > 0 and residual <= FLAT_GROWTH,
                )
            )
    return out


def _linear_fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``: the slope ``b`` and the largest relative deviation."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    a = my - b * mx
    return b, max(abs(y - (a + b * x)) / max(abs(y), 1e-30) for x, y in points)


def _name(rec: dict[str, Any]) -> str:
    size = f"n={_steps(rec)}" if rec["mode"] == "fixed" else f"rtol={rec['rtol']:g}"
    return f"{rec['workload']} {rec['method']} {size}"


def _reversible_time(records: Sequence[dict[str, Any]]) -> list[Row]:
    out: list[Row] = []
    for mine in _mine(records, dtype="float32"):
        if not _attr(mine["gradient"], "needs_reversible") or _dissipative_workload(
            mine["workload"]
        ):
            continue
        direct = _partner(records, mine, library="torchmali", gradient="direct")
        ratio = floor_ratio(mine, direct) if direct else None
        if ratio is not None:
            fwd = mine["forward_time_s"]
            out.append(
                (
                    f"{_name(mine)}: {mine['gradient']} time <= {FLOOR_BOUND}x floor "
                    "(direct + no-grad forward, same rounds)",
                    f"{mine['time_s']:.3f} s vs {direct['time_s']:.3f} + {fwd:.3f} s "
                    f"({ratio:.2f}x floor, {time_ratio(mine, direct):.2f}x direct)",
                    ratio <= FLOOR_BOUND,
                )
            )
        peer = _partner(records, mine, library="torchdiffeqpack", gradient=mine["gradient"])
        if peer:
            ratio = time_ratio(mine, peer)
            out.append(
                (
                    f"{_name(mine)}: {mine['gradient']} time <= {PEER_MALI_BOUND}x "
                    "TorchDiffEqPack MALI",
                    f"{mine['time_s']:.3f} s vs {peer['time_s']:.3f} s ({ratio:.2f}x)",
                    ratio <= PEER_MALI_BOUND,
                )
            )
    return out


def _symplectic(records: Sequence[dict[str, Any]]) -> list[Row]:
    out: list[Row] = []
    for mine in _mine(records, gradient="symplectic", dtype="float32"):
        direct = _partner(records, mine, library="torchmali", gradient="direct")
        check = _partner(records, mine, library="torchmali", gradient="checkpoint")
        if direct:
            ratio = time_ratio(mine, direct)
            out.append(
                (
                    f"{_name(mine)}: symplectic time <= {SYMPLECTIC_TIME_BOUND}x direct",
                    f"{mine['time_s']:.3f} s vs {direct['time_s']:.3f} s ({ratio:.2f}x)",
                    ratio <= SYMPLECTIC_TIME_BOUND,
                )
            )
        if check:
            a, b = mine["peak_memory_bytes"], check["peak_memory_bytes"]
            ra, rb = mine.get("reported_memory_bytes"), check.get("reported_memory_bytes")
            text = f"peak {a / _MIB:.2f} vs {b / _MIB:.2f} MiB ({a / max(b, 1):.2f}x)"
            if ra is not None and rb is not None:
                text += f"; memory_bytes {ra / _MIB:.2f} vs {rb / _MIB:.2f} MiB"
            out.append(
                (
                    f"{_name(mine)}: symplectic peak memory <= checkpoint's (+0.25 MiB floor)",
                    text,
                    a <= b + MEMORY_SLACK,
                )
            )
    return out


def _errors(records: Sequence[dict[str, Any]]) -> list[Row]:
    """Exact methods against direct backprop (own dtype) and, in float32, against float64."""
    out: list[Row] = []
    fixed = [
        r for r in _mine(records, mode="fixed")
        if not _dissipative_workload(r["workload"]) and r["gradient"] != "direct"
        and _attr(r["gradient"], "exact")
    ]  # fmt: skip
    keys = dict.fromkeys(
        (
            r["dtype"],
            r["gradient"],
            r["method"] if _attr(r["gradient"], "needs_reversible") else None,
        )
        for r in fixed
    )
    for dtype, gradient, solver in keys:
        mine = [
            r for r in fixed
            if (r["dtype"], r["gradient"]) == (dtype, gradient) and solver in (None, r["method"])
        ]  # fmt: skip
        who = f"{gradient} ({solver})" if solver else gradient
        bound = EXACT_BOUND.get(dtype, EXACT_BOUND["float32"])
        ref = "grad_rel_error_direct" if dtype == "float32" else "grad_rel_error_discrete"
        errs = [(r[ref], r) for r in mine if r.get(ref) is not None]
        if errs:
            worst, rec = max(errs, key=lambda e: e[0])
            out.append(
                (
                    f"{who} gradient error vs {dtype} direct, same grid <= {bound:g}",
                    f"max {worst:.1e} ({_name(rec)}, {len(errs)} runs)",
                    worst <= bound,
                )
            )
        if dtype != "float32":
            continue
        worst_row = None
        for r in mine:
            d = _partner(records, r, library="torchmali", gradient="direct")
            e_m, e_d = r.get("grad_rel_error_discrete"), d and d.get("grad_rel_error_discrete")
            if e_m is None or e_d is None:
                continue
            limit = max(FLOAT32_FACTOR * e_d, e_d + FLOAT32_SLACK)
            if worst_row is None or e_m / limit > worst_row[0]:
                worst_row = (e_m / limit, e_m, e_d, limit, r)
        if worst_row is not None:
            q, e_m, e_d, limit, r = worst_row
            n_runs = sum(1 for r in mine if r.get("grad_rel_error_discrete") is not None)
            out.append(
                (
                    f"{who} gradient error vs float64 direct, same grid <= max(2e, e + 2^-23), "
                    "e = float32 direct's own",
                    f"worst {e_m:.1e} where e = {e_d:.1e} (limit {limit:.1e}; {_name(r)}, "
                    f"{n_runs} runs)",
                    q <= 1.0,
                )
            )
    return out


def _dissipative(records: Sequence[dict[str, Any]]) -> list[Row]:
    out: list[Row] = []
    recs = [
        r for r in records
        if r["library"] == "torchmali" and r["status"] in ("ok", "error")
        and _dissipative_workload(r["workload"])
        and _attr(r["gradient"], "exact") and _attr(r["gradient"], "memory_efficient")
    ]  # fmt: skip
    for r in recs:
        said = reported(r)
        name = f"{_name(r)}: {r['gradient']} faithful, or its failure reported"
        if r["status"] == "error":
            out.append((name, said, True))
            continue
        fwd, ode = r.get("forward_rel_error_continuous"), r.get("grad_rel_error_continuous")
        same = r.get("grad_rel_error_direct")
        bound = EXACT_BOUND.get(r["dtype"], EXACT_BOUND["float32"])
        faithful = (
            fwd is not None and ode is not None and same is not None
            and fwd <= FAITHFUL and ode <= FAITHFUL and same <= bound
        )  # fmt: skip
        text = (
            f"forward {_fmt(fwd, 'err')}, gradient {_fmt(ode, 'err')} vs exact ODE; "
            f"{_fmt(same, 'err')} vs {r['dtype']} direct"
        )
        if r.get("parasitic") is not None:
            text += f"; parasitic {r['parasitic']:.2g}"
        text += f"; reported: {said}" if said else "; nothing reported"
        out.append((name, text, faithful or bool(said)))
    return out


def _peer_memory(records: Sequence[dict[str, Any]]) -> list[Row]:
    out: list[Row] = []
    for peer in _ok(records, library="torchdiffeqpack", gradient="checkpoint", mode="fixed"):
        mine = _partner(records, peer, library="torchmali", gradient="checkpoint")
        if peer["dtype"] != "float32" or not mine or not peer["peak_memory_bytes"]:
            continue
        a, b = mine["peak_memory_bytes"], peer["peak_memory_bytes"]
        out.append(
            (
                f"{_name(peer)}: checkpoint memory <= TorchDiffEqPack ACA (+0.25 MiB floor)",
                f"{a / _MIB:.2f} vs {b / _MIB:.2f} MiB ({a / b:.2f}x)",
                a <= b + MEMORY_SLACK,
            )
        )
    return out
