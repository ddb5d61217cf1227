"""Timing the configurations that are compared with each other, round-robin in one process.

The configurations of one *group* (same workload, solver, grid or tolerance, dtype and device: the
rows of one ratio) are timed in one fresh process, after one untimed call of each at full size
(the first call of a configuration pays for growing the heap: up to 1.5x a later one), in rounds:
every round times one forward + backward call of each configuration, starting with a different
one each round. Whatever else runs
on the machine then slows all of them alike, instead of whichever configuration happened to run at
that moment; within one process the repeats of a call agree to a few percent.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .measure import short_case, tune_allocator
from .plan import Case
from .runners import RUNNERS
from .workloads import WORKLOADS, Problem, build_problem

__all__ = ["TIMING_MMAP_THRESHOLD", "group_key", "time_group"]

#: Timed calls run with glibc's own steady state (its adaptive mmap threshold grows to 32 MiB);
#: mapping every tensor afresh, as for the memory call, makes small-tensor workloads twice slower.
TIMING_MMAP_THRESHOLD = 32 * 1024 * 1024
#: Short calls are repeated (up to five times ``repeats``) until they add up to this many seconds.
MIN_TIMED_S = 0.2


def _call(problem: Problem, forward: Callable) -> None:
    for p in problem.parameters():
        p.grad = None
    ys, _ = forward()
    problem.loss(ys).backward()


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
        ``cpu_time_s`` (median process CPU seconds), ``time_s_repeats`` and ``load_avg_1min``.
    """
    if isolated:
        tune_allocator(TIMING_MMAP_THRESHOLD)
        if cases[0].threads:
            torch.set_num_threads(cases[0].threads)
    device = torch.device(cases[0].device)
    calls = []
    for case in cases:
        problem = build_problem(
            WORKLOADS[case.workload], getattr(torch, case.dtype), device, case.seed
        )
        runner = RUNNERS[(case.library, case.gradient)]
        _call(problem, runner.prepare(problem, short_case(case)))  # warm-up: kernels, shapes
        calls.append((problem, runner.prepare(problem, case)))
    for call in calls:  # warm-up at full size: the first call grows the heap (page faults)
        _call(*call)

    wall: list[list[float]] = [[] for _ in cases]
    cpu: list[list[float]] = [[] for _ in cases]

    def wanted(i: int) -> bool:
        n, reps = len(wall[i]), cases[i].repeats
        return n < reps or (sum(wall[i]) < MIN_TIMED_S and n < 5 * reps)

    rounds = 0
    while any(wanted(i) for i in range(len(cases))):
        order = [(rounds + k) % len(cases) for k in range(len(cases))]
        for i in order:
            if not wanted(i):
                continue
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            _call(*calls[i])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall[i].append(time.perf_counter() - start)
            cpu[i].append(time.process_time() - start_cpu)
        rounds += 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return [
        {
            "time_s": statistics.median(w),
            "cpu_time_s": statistics.median(c),
            "time_s_repeats": w,
            "load_avg_1min": load,
        }
        for w, c in zip(wall, cpu, strict=True)
    ]
