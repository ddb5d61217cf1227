"""Running the measurements in fresh processes, one at a time.

Every process is forked from a server that has imported torch and the libraries but run nothing
(``multiprocessing``'s ``forkserver``; ``spawn`` where there is none), so no two measurements share
allocator state, caches or warm-up. First each configuration's memory, evaluations and gradient
errors (:func:`~torchmali.experiments.bench.measure.measure`, one process each), then the timing of
each group of configurations compared with each other
(:func:`~torchmali.experiments.bench.timing.time_group`, one process per group).
"""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .measure import measure
from .plan import Case
from .timing import group_key, time_group

__all__ = ["run_isolated"]

#: Imported once by the fork server rather than by every worker. The last one is what
#: ``torch.autograd.grad`` imports on first use (it pulls in sympy: 0.4 s per worker otherwise).
_PRELOAD = (
    "torch",
    "torchmali",
    "torchdiffeq",
    "TorchDiffEqPack",
    __name__,
    "torch.fx.experimental.symbolic_shapes",
)


def _memory_worker(case: dict, refs: str) -> dict[str, Any]:
    return measure(Case(**case), Path(refs), isolated=True)


def _timing_worker(cases: list[dict]) -> list[dict[str, Any]]:
    return time_group([Case(**c) for c in cases], isolated=True)


def _target(func: Callable, args: tuple, conn: Any) -> None:
    try:
        conn.send(func(*args))
    except BaseException as exc:  # report every failure to the parent, never hang it
        conn.send(
            {
                "status": "error",
                "note": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
        )
    finally:
        conn.close()


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


def _context() -> Any:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([m for m in _PRELOAD if _importable(m)])
        return ctx
    return mp.get_context("spawn")


def _run(ctx: Any, func: Callable, args: tuple, timeout: float) -> Any:
    """Run ``func(*args)`` in a fresh process; an error dict if it fails, dies or times out."""
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_target, args=(func, args, sender), daemon=True)
    proc.start()
    sender.close()
    try:
        if receiver.poll(timeout):
            result = receiver.recv()
        else:
            result = {"status": "error", "note": f"timed out after {timeout:g} s"}
    except EOFError:
        result = {"status": "error", "note": "the worker process died"}
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if isinstance(result, dict) and result.get("status") == "error" and proc.exitcode:
        result["note"] += f" (exit code {proc.exitcode})"
    return result


def run_isolated(
    cases: Sequence[Case],
    refs: Path,
    timeout: float,
    progress: Callable[[int, str], None] = lambda n, label: None,
) -> list[dict[str, Any]]:
    """Measure every case, each measurement in a process of its own, one after another.

    Args:
        cases: the configurations.
        refs: directory of the cached reference gradients.
        timeout: seconds after which one configuration's process is killed (a group's timing
            process gets this per configuration) and reported as an error.
        progress: called with a number of finished steps (two per case) and a label.

    Returns:
        One result per case, in order: the record's measured fields, or ``status: "error"`` with
        a ``note``.
    """
    ctx = _context()
    results: list[dict[str, Any]] = []
    for case in cases:
        started = time.perf_counter()
        result = _run(ctx, _memory_worker, (case.to_dict(), str(refs)), timeout)
        result["duration_s"] = round(time.perf_counter() - started, 3)
        results.append(result)
        progress(1, f"memory {case.label()}")
    groups: dict[tuple, list[int]] = {}
    for i, case in enumerate(cases):
        if results[i].get("status") == "ok":
            groups.setdefault(group_key(case), []).append(i)
    for key, members in groups.items():
        started = time.perf_counter()
        timed = _run(
            ctx, _timing_worker, ([cases[i].to_dict() for i in members],), timeout * len(members)
        )
        share = round((time.perf_counter() - started) / len(members), 3)
        for k, i in enumerate(members):
            if isinstance(timed, dict):  # the group failed
                results[i].update(status="error", note="timing: " + timed["note"])
            else:
                results[i].update(timed[k])
            results[i]["duration_s"] += share
        progress(len(members), f"time {' '.join(str(k) for k in key if k is not None)}")
    progress(len(cases) - sum(map(len, groups.values())), "done")
    return results
