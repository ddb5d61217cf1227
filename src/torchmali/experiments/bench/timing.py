"""Timing the configurations that are compared with each other, round-robin in one process.

The configurations of one *group* (same workload, solver, grid or tolerance, dtype and device: the
rows of one ratio) are timed in one fresh process, after one untimed call of each at full size
(the first call of a configuration pays for growing the heap: up to 1.5x a later one), in rounds:
every round times one forward + backward call of each configuration, starting with a different
one each round. Whatever else runs
on the machine then slows all of them alike, instead of whichever configuration happened to run at
that moment; within one process the repeats of a call agree to a few percent.

A group with a method that needs a reversible solver (``mali``) also times, in the same rounds,
the *forward sweep alone*: torchmali's solve of the same problem under ``torch.no_grad()``. A
reversible backward pass reconstructs every step and differentiates it, so its floor is direct
backprop plus one forward sweep without graph; both parts of that floor are then measured in the
same rounds as the method (``forward_time_s``, ``forward_time_s_repeats`` in every record of the
group; see :func:`~torchmali.experiments.bench.report.floor_ratio`).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .measure import short_case, tune_allocator
from .plan import Case, gradient_config
from .runners import runner
from .workloads import WORKLOADS, Problem, build_problem

__all__ = ["TIMING_MMAP_THRESHOLD", "group_key", "needs_forward_sweep", "time_group"]

#: Timed calls run with glibc's own steady state (its adaptive mmap threshold grows to 32 MiB);
#: mapping every tensor afresh, as for the memory call, makes small-tensor workloads twice slower.
TIMING_MMAP_THRESHOLD = 32 * 1024 * 1024
#: Short calls are repeated (up to five times ``repeats``) until they add up to this many seconds.
MIN_TIMED_S = 0.2
#: Groups judged against a reversible method's floor (a 5% margin, on calls of 10-200 ms whose
#: single rounds vary by up to 30% on a shared machine) are timed for longer: up to ten times
#: ``repeats`` rounds, until every call adds up to this many seconds.
MIN_TIMED_FLOOR_S = 1.0


def _call(problem: Problem, forward: Callable) -> None:
    for p in problem.parameters():
        p.grad = None
    ys, _ = forward()
    problem.loss(ys).backward()


def _call_no_grad(problem: Problem, forward: Callable) -> None:
    with torch.no_grad():
        forward()


def needs_forward_sweep(cases: Sequence[Case]) -> bool:
    """Whether a group holds a torchmali method that needs a reversible solver (its time floor is
    direct backprop plus one forward sweep: both are timed with it)."""
    return any(
        c.library == "torchmali" and gradient_config(c.gradient).needs_reversible for c in cases
    )


def group_key(case: Case) -> tuple:
    """Configurations with the same key are timed together (one ratio's rows)."""
    return (case.workload, case.method, case.n_steps, case.rtol, case.dtype, case.device)


def time_group(cases: Sequence[Case], isolated: bool = False) -> list[dict[str, Any]]:
    """Time ``cases`` (one group) round-robin.

    Args:
        cases: configurations with the same :func:`group_key`.
        isolated: this is a worker process of its own: set its thread count and allocator.

    Returns:
        Per case: ``time_s`` (median wall-clock seconds of a forward + backward call),
        ``cpu_time_s`` (median process CPU seconds), ``time_s_repeats`` and ``load_avg_1min``;
        with ``forward_time_s`` and ``forward_time_s_repeats`` (the no-grad forward sweep, timed
        in the same rounds) when :func:`needs_forward_sweep`.
    """
    if isolated:
        tune_allocator(TIMING_MMAP_THRESHOLD)
        if cases[0].threads:
            torch.set_num_threads(cases[0].threads)
    with warnings.catch_warnings():  # the memory call has recorded them
        warnings.simplefilter("ignore")
        return _time_group(cases)


def _time_group(cases: Sequence[Case]) -> list[dict[str, Any]]:
    device = torch.device(cases[0].device)
    entries = list(cases)
    calls = []
    for case in cases:
        problem = build_problem(
            WORKLOADS[case.workload], getattr(torch, case.dtype), device, case.seed
        )
        run = runner(case.library, case.gradient)
        _call(problem, run.prepare(problem, short_case(case)))  # warm-up: kernels, shapes
        calls.append((_call, problem, run.prepare(problem, case)))
    if needs_forward_sweep(cases):  # the forward sweep alone, without graph
        sweep = dataclasses.replace(cases[0], library="torchmali", gradient="direct")
        problem = build_problem(
            WORKLOADS[sweep.workload], getattr(torch, sweep.dtype), device, sweep.seed
        )
        run = runner("torchmali", "direct")
        _call_no_grad(problem, run.prepare(problem, short_case(sweep)))
        entries.append(sweep)
        calls.append((_call_no_grad, problem, run.prepare(problem, sweep)))
    for call, *args in calls:  # warm-up at full size: the first call grows the heap (page faults)
        call(*args)

    wall: list[list[float]] = [[] for _ in entries]
    cpu: list[list[float]] = [[] for _ in entries]

    floor = len(entries) > len(cases)  # a forward sweep was added: a floor ratio is judged
    budget, most = (MIN_TIMED_FLOOR_S, 10) if floor else (MIN_TIMED_S, 5)

    def wanted(i: int) -> bool:
        n, reps = len(wall[i]), entries[i].repeats
        return n < reps or (sum(wall[i]) < budget and n < most * reps)

    rounds = 0
    while any(wanted(i) for i in range(len(entries))):
        order = [(rounds + k) % len(entries) for k in range(len(entries))]
        for i in order:
            if not wanted(i):
                continue
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            call, *args = calls[i]
            call(*args)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall[i].append(time.perf_counter() - start)
            cpu[i].append(time.process_time() - start_cpu)
        rounds += 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    forward = {}
    if len(entries) > len(cases):
        forward = {
            "forward_time_s": statistics.median(wall[-1]),
            "forward_time_s_repeats": wall[-1],
        }
    return [
        {
            "time_s": statistics.median(w),
            "cpu_time_s": statistics.median(c),
            "time_s_repeats": w,
            "load_avg_1min": load,
            **forward,
        }
        for w, c in zip(wall[: len(cases)], cpu[: len(cases)], strict=True)
    ]
