"""Thin adapters that run one configuration with torchmali or a peer library.

Every runner turns a :class:`~torchmali.experiments.bench.plan.Case` and a
:class:`~torchmali.experiments.bench.workloads.Problem` into a closure ``forward() -> (ys, info)``
with the same vector field, the same grid and the same dtype: ``ys`` are the states the loss reads
and ``info`` may hold the accepted grid (``"grid"``, a 1-D float64 tensor) and torchmali's own
statistics (``"stats"``, read after the backward pass).

Peers (the ``[peers]`` extra): torchdiffeq's ``odeint`` (``direct``) and ``odeint_adjoint``
(``adjoint``); TorchDiffEqPack's ``odesolve_adjoint_sym12`` (``mali``) and ``odesolve_adjoint``
(ACA, ``checkpoint``). TorchDiffEqPack's memory-efficient solvers return the end state only, so they
skip the workloads with several output times; its fixed-grid ACA crashes (design doc §6, defect 2)
and is patched here, in the benchmark's worker process only. Its ``rk4`` is the classical scheme
while torchmali's and torchdiffeq's ``rk4`` is Kutta's 3/8 rule, so it is not run on their grid.

torchmali runs every gradient method of its registry (and ``name[key=value]`` variants, see
:func:`~torchmali.experiments.bench.plan.gradient_config`): :func:`runner` builds its runner on
demand, so a method registered after this module was imported is found too.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .plan import Case, gradient_config
from .workloads import WORKLOADS, Problem

__all__ = ["RUNNERS", "Runner", "runner", "support"]

Forward = Callable[[], tuple[torch.Tensor, dict[str, Any]]]


@dataclass(frozen=True)
class Runner:
    """How one library runs one gradient method.

    Attributes:
        library: library name.
        gradient: gradient method (torchmali's vocabulary).
        entry_point: the peer's function, for the report.
        methods: torchmali solver name -> the library's name for the same scheme, per mode
            (``fixed`` / ``adaptive``).
        module: the module that must be importable.
        final_state_only: the library returns the end state only.
        prepare: builds the forward closure.
    """

    library: str
    gradient: str
    entry_point: str
    methods: dict[str, dict[str, str]]
    module: str
    final_state_only: bool
    prepare: Callable[[Problem, Case], Forward]

    def peer_method(self, case: Case) -> str | None:
        """The library's name of the case's solver, or ``None`` if it has none."""
        return self.methods[case.mode].get(case.method)


def _torchmali(problem: Problem, case: Case) -> Forward:
    import torchmali

    gradient = gradient_config(case.gradient)
    kwargs: dict[str, Any] = {"method": case.method, "gradient": gradient}
    if case.n_steps is not None:
        kwargs["options"] = {"step_size": WORKLOADS[case.workload].step_size(case.n_steps)}
    else:
        kwargs.update(rtol=case.rtol, atol=case.atol)

    def forward() -> tuple[torch.Tensor, dict[str, Any]]:
        sol = torchmali.solve(problem.func, problem.y0, problem.t, **kwargs)
        return sol.ys, {"grid": sol.ts, "stats": sol.stats}

    return forward


def _torchdiffeq(problem: Problem, case: Case) -> Forward:
    import torchdiffeq

    peer = RUNNERS[("torchdiffeq", case.gradient)]
    kwargs: dict[str, Any] = {"method": peer.peer_method(case)}
    if case.n_steps is not None:
        kwargs["options"] = {"step_size": WORKLOADS[case.workload].step_size(case.n_steps)}
    else:
        kwargs.update(rtol=case.rtol, atol=case.atol)
    if case.gradient == "adjoint":
        kwargs["adjoint_params"] = tuple(problem.func.parameters())
        solve = torchdiffeq.odeint_adjoint
    else:
        solve = torchdiffeq.odeint

    def forward() -> tuple[torch.Tensor, dict[str, Any]]:
        return solve(problem.func, problem.y0, problem.t, **kwargs), {}

    return forward


def _patch_torchdiffeqpack_fixed_aca() -> None:
    """Make TorchDiffEqPack's ACA (``odesolve_adjoint``) run with its fixed-grid solvers.

    Its backward pass expects the forward's step list as a Python list and an iterable error
    estimate; the fixed-grid solvers return a tensor and ``None`` (design doc §6, defect 2). The
    patch converts both, changing nothing else.
    """
    from TorchDiffEqPack.odesolver import fixed_grid_solver as fg

    if getattr(fg.FixedGridSolver, "_torchmali_bench_patched", False):
        return
    integrate = fg.FixedGridSolver.integrate

    def patched_integrate(self, y0, t0, predefine_steps=None, return_steps=False, t_eval=None):
        out = integrate(self, y0, t0, predefine_steps, return_steps, t_eval)
        if return_steps:
            return out[0], list(out[1].reshape(-1).unbind(0))
        return out

    fg.FixedGridSolver.integrate = patched_integrate
    for cls in (fg.Euler, fg.RK2, fg.RK4):

        def patched_step(self, func, t, dt, y, return_variables=False, _step=cls.step):
            out = _step(self, func, t, dt, y, return_variables)
            return (out[0], () if out[1] is None else out[1], *out[2:])

        cls.step = patched_step
    fg.FixedGridSolver._torchmali_bench_patched = True


def _torchdiffeqpack(problem: Problem, case: Case) -> Forward:
    import TorchDiffEqPack
    from TorchDiffEqPack.odesolver import symplectic

    if symplectic.Lambda != 1.0:  # its damping eta is a module global; torchmali uses 1.0
        raise ValueError(f"TorchDiffEqPack's ALF damping is {symplectic.Lambda}, expected 1.0")
    peer = RUNNERS[("torchdiffeqpack", case.gradient)]
    workload = WORKLOADS[case.workload]
    t0, t1 = float(problem.t[0]), workload.t1
    if case.gradient == "mali":
        solve = TorchDiffEqPack.odesolve_adjoint_sym12
    else:
        solve = TorchDiffEqPack.odesolve_adjoint
        if case.n_steps is not None:
            _patch_torchdiffeqpack_fixed_aca()
    base = {
        "method": peer.peer_method(case),
        "t0": t0,
        "t1": t1,
        "print_neval": False,
        "neval_max": 500_000,
    }
    if case.n_steps is not None:
        base["h"] = workload.step_size(case.n_steps)
    else:
        base.update(h=None, rtol=case.rtol, atol=case.atol)

    def forward() -> tuple[torch.Tensor, dict[str, Any]]:
        out = solve(problem.func, problem.y0, dict(base))  # it mutates its options
        if isinstance(out, tuple):
            out = out[0]
        steps = out.grad_fn.steps  # the accepted times after t0 (kept on the autograd node)
        steps = steps.reshape(-1).tolist() if torch.is_tensor(steps) else [float(s) for s in steps]
        return out, {"grid": torch.tensor([t0, *steps], dtype=torch.float64)}

    return forward


#: The peers' runners (torchmali's are built by :func:`runner`).
RUNNERS: dict[tuple[str, str], Runner] = {
    (r.library, r.gradient): r
    for r in [
        *(
            Runner(
                "torchdiffeq",
                g,
                entry,
                {
                    "fixed": {
                        "euler": "euler",
                        "midpoint": "midpoint",
                        "heun": "heun2",
                        "rk4": "rk4",
                    },
                    "adaptive": {m: m for m in ("dopri5", "bosh3", "adaptive_heun")},
                },
                "torchdiffeq",
                False,
                _torchdiffeq,
            )
            for g, entry in (("direct", "odeint"), ("adjoint", "odeint_adjoint"))
        ),
        Runner(
            "torchdiffeqpack",
            "mali",
            "odesolve_adjoint_sym12",
            {"fixed": {"alf": "fixedstep_sym12async"}, "adaptive": {"alf": "sym12async"}},
            "TorchDiffEqPack",
            True,
            _torchdiffeqpack,
        ),
        Runner(
            "torchdiffeqpack",
            "checkpoint",
            "odesolve_adjoint (ACA)",
            {
                "fixed": {"euler": "euler", "midpoint": "rk2"},  # its rk4 is not the 3/8 rule
                "adaptive": {"dopri5": "dopri5", "bosh3": "rk23"},
            },
            "TorchDiffEqPack",
            True,
            _torchdiffeqpack,
        ),
    ]
}


def runner(library: str, gradient: str) -> Runner | None:
    """The runner of ``gradient`` (torchmali's vocabulary) in ``library``, ``None`` if it has none.

    torchmali's runners are built here from the registry (every registered name, alias or
    ``name[key=value]`` variant), the peers' come from :data:`RUNNERS`.
    """
    if library != "torchmali":
        return RUNNERS.get((library, gradient))
    try:
        gradient_config(gradient)
    except (ValueError, TypeError):
        return None
    return Runner(
        "torchmali",
        gradient,
        f"solve(gradient={gradient!r})",
        {"fixed": {}, "adaptive": {}},
        "torchmali",
        False,
        _torchmali,
    )


def support(case: Case) -> tuple[bool, str | None]:
    """Whether ``case`` is part of the plan, and why it is skipped if it cannot run here.

    Args:
        case: the configuration.

    Returns:
        ``(False, None)`` for a combination that does not exist (dropped from the plan),
        ``(True, note)`` for one that is reported as skipped, ``(True, None)`` for one that runs.
    """
    found = runner(case.library, case.gradient)
    if found is None:
        return False, None
    if case.library == "torchmali":
        import torchmali

        solver = torchmali.SOLVERS.get(case.method)
        if solver is None or (case.mode == "adaptive" and not solver.adaptive):
            return False, None
        if not gradient_config(case.gradient).accepts(solver, case.mode == "fixed"):
            return False, None  # e.g. MALI with a non-reversible solver
    elif found.peer_method(case) is None:
        return False, None
    if importlib.util.find_spec(found.module) is None:
        return True, f"{found.library} is not installed (pip install 'torchmali[peers]')"
    if found.final_state_only and WORKLOADS[case.workload].n_outputs > 1:
        return True, f"{found.library} {found.entry_point} returns the end state only"
    if case.device == "cuda" and not torch.cuda.is_available():
        return True, "CUDA is not available"
    return True, None
