"""Measuring one configuration's memory, evaluations and gradient errors (in a fresh process).

In the worker, in this order (the timing is done separately, see
:mod:`~torchmali.experiments.bench.timing`):

1. warm-up: a short solve on the full batch (lazy initialisation, kernels for these shapes), then
   the full grid on one sample (per-step Python objects and interpreter caches grow to their size
   for this grid);
2. one forward + backward call on the full batch for the peak memory, the evaluation and
   vector–Jacobian-product counts (a counting wrapper around the vector field, the same for every
   library), the warnings raised during the call, and the gradient;
3. the gradient errors against the reference gradients (cached in ``refs/``), and the forward
   solution's error against the exact ODE solution.

Memory is measured the same way for every library, independently of torchmali's bookkeeping:

* CUDA: ``torch.cuda.max_memory_allocated()`` during the call minus the memory allocated just
  before it (peak statistics reset first).
* CPU (Linux): the peak resident set size (``VmHWM``) during the call minus the resident set size
  just before it. The worker serves every allocation of 16 KiB or more by its own mapping (glibc's
  ``mallopt``), so a freed tensor leaves the RSS at once and the peak follows the live tensors
  rather than the heap's fragmentation (which otherwise makes it vary by tens of percent from run
  to run); before the call it returns its free heap to the OS (``malloc_trim``) and resets its peak
  RSS (writing ``5`` to ``/proc/self/clear_refs``). What remains is a floor of some hundred KiB (the
  interpreter's small objects). Elsewhere the high-water mark ``ru_maxrss`` is used, exact only
  when the call is the largest so far.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import importlib.util
import resource
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .plan import Case
from .runners import runner
from .workloads import WORKLOADS, Problem, build_problem, gradient_vector

__all__ = ["CountingField", "measure", "short_case", "tune_allocator"]

#: Tolerances of the continuous-time reference gradient (float64 dopri5).
REFERENCE_RTOL, REFERENCE_ATOL = 1e-10, 1e-12
_libc = ctypes.CDLL(ctypes.util.find_library("c")) if sys.platform.startswith("linux") else None
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
#: Memory call: every tensor of 16 KiB or more in its own mapping, so that a freed tensor leaves
#: the RSS at once.
MEMORY_MMAP_THRESHOLD = 16 * 1024


class CountingField(nn.Module):
    """Wraps a vector field and counts its evaluations and the vector–Jacobian products through
    them, the same way for every library.

    ``calls`` counts every evaluation (with or without graph). ``vjps`` counts the backward passes
    through an evaluation's output: a hook on every output that requires grad fires once each time
    autograd computes a gradient with respect to it (``backward()``, ``torch.autograd.grad`` or the
    engine called directly, the output being the root or inside the graph), so a VJP through one
    evaluation counts once however many parameters it reaches.
    """

    def __init__(self, func: nn.Module) -> None:
        super().__init__()
        self.func = func
        self.calls = 0
        self.vjps = 0

    def forward(self, t: Any, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.func(t, y)
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.register_hook(self._count_vjp)
        return out

    def _count_vjp(self, grad: torch.Tensor) -> None:
        self.vjps += 1


def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class _PeakRSS:
    """Peak resident set size above a baseline (see the module docstring)."""

    def __init__(self) -> None:
        self.exact = _status_bytes("VmHWM") is not None and self._reset()
        self.method = "peak_rss_above_baseline" if self.exact else "ru_maxrss_above_baseline"

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _maxrss() -> int:
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def start(self) -> None:
        gc.collect(1)  # not gen 2: that would also empty Python's free lists, refilled in the call
        if _libc is not None:
            _libc.malloc_trim(0)  # give the free heap back to the OS
        if self.exact:
            self._reset()
            self.base = _status_bytes("VmRSS")
        else:
            self.base = self._maxrss()

    def peak(self) -> int:
        now = _status_bytes("VmHWM") if self.exact else self._maxrss()
        return max(0, now - self.base)


class _PeakCUDA:
    method = "cuda_max_memory_allocated"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def start(self) -> None:
        gc.collect(1)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.base = torch.cuda.memory_allocated(self.device)

    def peak(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - self.base


def _rel_error(g: torch.Tensor, ref: torch.Tensor | None) -> float | None:
    if ref is None:
        return None
    return float((g - ref).norm() / ref.norm())


def _direct(
    case: Case, dtype: torch.dtype, method: str, grid: torch.Tensor | None, **kwargs: Any
) -> dict[str, torch.Tensor]:
    """The gradient of the case's loss by torchmali's direct backprop in ``dtype``, and the states
    the loss reads (float64).

    ``grid`` replays an adaptive run's accepted grid exactly (``solve_on_grid``: the same steps,
    hints and interpolation, bit for bit); otherwise ``kwargs`` (``rtol``/``atol`` or
    ``options``) configure the solve.
    """
    import torchmali

    workload = WORKLOADS[case.workload]
    problem = build_problem(workload, dtype, case.device, case.seed)
    if grid is not None:
        from torchmali._odeint import solve_on_grid

        rtol = case.rtol if case.rtol is not None else 1e-7
        atol = case.atol if case.atol is not None else rtol
        ys = solve_on_grid(
            problem.func, problem.y0, problem.t, grid, rtol, atol, method, gradient="direct"
        ).ys
    else:
        ys = torchmali.odeint(
            problem.func, problem.y0, problem.t, method=method, gradient="direct", **kwargs
        )
    return _loss_and_grad(problem, ys)


def _loss_and_grad(problem: Problem, ys: torch.Tensor) -> dict[str, torch.Tensor]:
    problem.loss(ys).backward()
    outputs = problem.outputs(ys).detach().to(device="cpu", dtype=torch.float64)
    return {"grad": gradient_vector(problem), "ys": outputs}


def _continuous(case: Case) -> dict[str, torch.Tensor]:
    """The exact ODE's gradient and states: in closed form where the field has one (``flow``),
    otherwise a float64 dopri5 solve at rtol 1e-10, atol 1e-12."""
    workload = WORKLOADS[case.workload]
    problem = build_problem(workload, torch.float64, case.device, case.seed)
    flow = getattr(problem.func, "flow", None)
    if flow is not None:
        return _loss_and_grad(problem, flow(problem.y0, problem.t))
    return _direct(case, torch.float64, "dopri5", None, rtol=REFERENCE_RTOL, atol=REFERENCE_ATOL)


def _cached(path: Path, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if path.exists():
        return torch.load(path)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(value, path)
    return value


def _references(
    case: Case, grid: torch.Tensor | None, refs: Path
) -> tuple[dict[str, dict[str, torch.Tensor] | None], str | None]:
    """The reference gradients and states (``{"grad", "ys"}``), ``None`` where unavailable (with a
    note):

    * ``discrete``: torchmali's direct backprop in float64 on the same grid;
    * ``direct``: the same in the case's dtype (what the gradient method should reproduce up to
      its own round-off; for float32 the ``discrete`` error also contains float32's);
    * ``continuous``: the exact ODE solution and its gradient (closed form, or float64 dopri5 at
      rtol 1e-10).
    """
    if importlib.util.find_spec("torchmali") is None:
        return {}, "torchmali is not importable: no reference gradients"
    tag = f"{case.workload}-seed{case.seed}"
    out: dict[str, dict[str, torch.Tensor] | None] = {
        "continuous": _cached(refs / f"continuous-{tag}.pt", lambda: _continuous(case))
    }
    note = None
    dtypes = {"discrete": torch.float64, "direct": getattr(torch, case.dtype)}
    for key, dtype in dtypes.items():
        if case.n_steps is not None:
            h = WORKLOADS[case.workload].step_size(case.n_steps)
            name = f"discrete-{tag}-{case.method}-n{case.n_steps}-{str(dtype)[6:]}.pt"
            out[key] = _cached(
                refs / name,
                lambda dtype=dtype, h=h: _direct(
                    case, dtype, case.method, None, options={"step_size": h}
                ),
            )
        elif grid is None:
            out[key], note = None, "the library does not expose its accepted grid"
        else:
            try:
                out[key] = _direct(case, dtype, case.method, grid)
            except ValueError as exc:  # a peer's grid torchmali cannot replay
                out[key], note = None, str(exc)
    return out, note


def short_case(case: Case) -> Case:
    """The case on a short grid (or a loose tolerance): a cheap warm-up with the same shapes."""
    if case.n_steps is not None:
        return dataclasses.replace(case, n_steps=2 * WORKLOADS[case.workload].n_outputs)
    return dataclasses.replace(case, rtol=1e-1, atol=1e-1)


def tune_allocator(mmap_threshold: int) -> None:
    """Serve every allocation of ``mmap_threshold`` bytes or more by its own mapping, returned to
    the OS when freed; trim the heap when ``2 * mmap_threshold`` bytes are free at its top (glibc
    only; this also turns off glibc's adaptive threshold)."""
    if _libc is not None:
        _libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        _libc.mallopt(_M_TRIM_THRESHOLD, 2 * mmap_threshold)


def measure(case: Case, refs: Path, isolated: bool = False) -> dict[str, Any]:
    """Measure one configuration in the current process.

    Args:
        case: the configuration.
        refs: directory of the cached reference gradients.
        isolated: this is a worker process of its own: set its thread count and its allocator
            (see the module docstring). Without it the memory figure is only indicative.

    Returns:
        The record without the timing: the case's fields, then ``peak_memory_bytes``,
        ``nfe_forward``, ``nfe_backward``, ``vjp_backward``, the gradient errors, the forward
        error against the exact ODE, the warnings of the measured call and torchmali's own
        statistics.
    """
    if isolated:
        tune_allocator(MEMORY_MMAP_THRESHOLD)
        if case.threads:
            torch.set_num_threads(case.threads)
    run = runner(case.library, case.gradient)
    if run is None:
        raise ValueError(f"{case.library} has no gradient method {case.gradient!r}")
    device = torch.device(case.device)
    problem = build_problem(WORKLOADS[case.workload], getattr(torch, case.dtype), device, case.seed)
    counter = CountingField(problem.func)
    counted = Problem(counter, problem.y0, problem.t, problem.weights)
    forward = run.prepare(counted, case)
    meter = _PeakCUDA(device) if device.type == "cuda" else _PeakRSS()

    def call(prob: Problem, fwd: Callable) -> tuple[int, int, int, torch.Tensor, dict[str, Any]]:
        for p in prob.parameters():
            p.grad = None
        counter.calls = counter.vjps = 0
        ys, info = fwd()
        nfe_forward, vjp_forward = counter.calls, counter.vjps
        prob.loss(ys).backward()
        nfe_backward, vjp_backward = counter.calls - nfe_forward, counter.vjps - vjp_forward
        return nfe_forward, nfe_backward, vjp_backward, ys, info

    # Warm-up: a short solve on the full batch (lazy initialisation, kernels for these shapes),
    # then the full grid on one sample (per-step Python objects and the interpreter's caches grow
    # to their size for this grid).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        call(counted, run.prepare(counted, short_case(case)))
        one = counted.subset(1)
        call(one, run.prepare(one, case))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meter.start()
        nfe_forward, nfe_backward, vjp_backward, ys, info = call(counted, forward)
        peak = meter.peak()
    grad = gradient_vector(problem)
    ys = problem.outputs(ys).detach().to(device="cpu", dtype=torch.float64)
    del forward
    stats, grid = info.get("stats"), info.get("grid")

    references, note = _references(case, grid, refs)
    errors = {
        f"grad_rel_error_{k}": _rel_error(grad, v["grad"] if v else None)
        for k, v in references.items()
    }
    continuous = references.get("continuous")
    return {
        **case.to_dict(),
        "mode": case.mode,
        "peer_method": run.peer_method(case) if case.library != "torchmali" else None,
        "status": "ok",
        "note": note,
        "n_steps": case.n_steps if grid is None else len(grid) - 1,  # accepted
        "n_steps_requested": case.n_steps,
        "peak_memory_bytes": int(peak),
        "memory_method": meter.method,
        "nfe_forward": nfe_forward,
        "nfe_backward": nfe_backward,
        "vjp_backward": vjp_backward,
        **errors,
        "forward_rel_error_continuous": _rel_error(ys, continuous["ys"] if continuous else None),
        "warnings": list(dict.fromkeys(_warning_text(w) for w in caught)),
        "reported_memory_bytes": getattr(stats, "memory_bytes", None),
        "reported_nfe_forward": getattr(stats, "nfe_forward", None),
        "reported_nfe_backward": getattr(stats, "nfe_backward", None),
        "drift": getattr(stats, "drift", None),
        "parasitic": getattr(stats, "parasitic", None),
        "recomputed_steps": getattr(stats, "recomputed_steps", None),
        "stats": stats.as_dict() if hasattr(stats, "as_dict") else None,
    }


def _warning_text(w: warnings.WarningMessage) -> str:
    """``Category: message`` of a caught warning, cut to 300 characters."""
    text = f"{w.category.__name__}: {w.message}"
    return text if len(text) <= 300 else text[:297] + "..."
