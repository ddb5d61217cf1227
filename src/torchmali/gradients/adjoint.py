"""The continuous backsolve adjoint (Chen et al., 2018): the baseline MALI and ANODE argue against."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import torch

from .._loop import Problem, StepRecord, integrate
from .._options import Options
from .._solution import SolveStats
from .._tree import RHS, Structure
from .._vjp import engine_grad
from ..solvers import ALF, SOLVERS
from ..solvers.base import Solver
from ..step_size import Tolerance, rms_norm
from . import _validate
from ._sweep import Saved, SweepMethod, Tape
from .base import register

_NORMS = ("mixed", "seminorm")


@register
@dataclass(frozen=True)
class Adjoint(SweepMethod):
    """Continuous backsolve adjoint (optimize-then-discretize; Chen et al., NeurIPS 2018).

    The forward pass integrates under ``no_grad`` and keeps only the solution at the output
    times. The backward pass solves the augmented system ``[z, a, θ̄]`` backwards in time,
    segment by segment between consecutive output times::

        dz/dt = f(t, z),   da/dt = −aᵀ ∂f/∂z,   dθ̄/dt = −aᵀ ∂f/∂θ

    with one vector–Jacobian product per evaluation, restarting ``z`` from the stored output and
    adding that output's incoming cotangent to ``a`` at every output time.

    Memory: ``O(N_z · N_f)`` for one evaluation's graph, plus the stored outputs; constant in
    the number of steps. Works with every solver (fixed grid, adaptive, ALF).

    The gradient is **not** the exact gradient of the discrete forward solve: ``z`` is
    re-integrated backwards, and that reverse trajectory is not the forward one (for
    dissipative dynamics the reverse solve is ill-posed), and ``a`` is a discretisation of the
    continuous adjoint, not the transpose of the forward discretisation. The gap is of the
    order of the solver's error: tiny at tight tolerances, large on coarse grids (relative gap
    to the discrete gradient 0.43 with one Euler step of a tanh MLP, 1.03 with a ReLU MLP, 0.005
    after 64 steps; see ``docs/adjoint.md``). It is the baseline that the MALI (Zhuang et al.,
    2021) and ANODE (Gholami et al., 2019) papers argue against. Prefer ``"mali"`` (ALF, exact up to round-off, constant memory) or
    ``"checkpoint"`` / ``"binomial"`` (exact with any solver, memory ``O(N_t)`` /
    ``O(log N_t)`` states) whenever the discrete gradient matters: coarse grids, fixed-step
    training, dissipative or non-smooth dynamics. The adjoint is reasonable for smooth,
    non-dissipative dynamics solved at tight tolerances, where memory is the only constraint.

    Args:
        rtol: relative tolerance of the backward solve (default: the forward ``rtol``).
        atol: absolute tolerance of the backward solve (default: the forward ``atol``).
        method: solver of the backward solve (default: the forward solver; with ``"alf"`` the
            augmented system is integrated with ALF too, its velocity re-initialised at the
            start of every segment).
        options: solver options of the backward solve (default: the forward options, without
            ``norm``). Besides the keys of :class:`torchmali.Options`, ``"norm"`` may be
            ``"mixed"`` (default: the maximum of the RMS norms of the ``z``, ``a`` and ``θ̄``
            parts), ``"seminorm"`` (Kidger, Chen & Lyons, 2021: the ``θ̄`` part is left out of
            error control, which saves backward evaluations at no cost in accuracy), or a
            callable ``norm(scaled_error) -> scalar`` over the flat augmented state
            ``cat([z, a, θ̄])``. With a fixed-grid backward solve at the forward step size the
            forward grid is replayed in reverse.

    No double backward (use ``"direct"``).

    Raises:
        ValueError, TypeError: unknown method or option, invalid tolerance.

    References:
        Chen, Rubanova, Bettencourt & Duvenaud, Neural Ordinary Differential Equations (2018);
        Kidger, Chen & Lyons, "Hey, that's not an ODE" (2021); Gholami, Keutzer & Biros, ANODE
        (2019); Zhuang et al., MALI (2021).
    """

    rtol: float | None = None
    atol: float | None = None
    method: str | None = None
    options: Mapping[str, Any] | None = None

    name = "adjoint"
    aliases = ("backsolve",)
    exact = False

    def __post_init__(self) -> None:
        for key in ("rtol", "atol"):
            value = getattr(self, key)
            if value is not None:
                example = f"Adjoint({key}=1e-8), or None for the forward {key}"
                value = _validate.number("Adjoint", key, value, example, positive=False)
                object.__setattr__(self, key, value)
        if self.method is not None and (
            not isinstance(self.method, str) or self.method not in SOLVERS
        ):
            raise (ValueError if isinstance(self.method, str) else TypeError)(
                f"unknown adjoint method {self.method!r}; valid methods are {sorted(SOLVERS)} "
                "(or None for the forward solver)"
            )
        if self.options is not None:
            if not isinstance(self.options, Mapping):
                raise TypeError(
                    f"adjoint options must be a dict, got {type(self.options).__name__}: "
                    "e.g. Adjoint(options={'norm': 'seminorm'})"
                )
            object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
            self._parsed_options()  # validate now rather than in the backward pass

    def _parsed_options(self) -> tuple[Options | None, Any]:
        if self.options is None:
            return None, "mixed"
        opts = dict(self.options)
        norm = opts.pop("norm", None)
        norm = "mixed" if norm is None else norm
        if not (callable(norm) or norm in _NORMS):
            raise ValueError(
                f"adjoint options['norm'] must be one of {list(_NORMS)} or a callable "
                f"norm(scaled_error) -> scalar, got {norm!r}"
            )
        try:
            return Options.parse(opts), norm
        except ValueError as e:
            raise ValueError(f"invalid adjoint options: {e}") from e

    def check(self, solver: Solver, problem_is_fixed: bool) -> None:
        cls = SOLVERS[self.method] if self.method is not None else type(solver)
        opts, _ = self._parsed_options()
        has_step = problem_is_fixed if opts is None else opts.step_size is not None
        if not cls.adaptive and not has_step:
            raise ValueError(
                f"the adjoint method {cls.name!r} is a fixed-grid solver: pass "
                "Adjoint(options={'step_size': h}) (adjoint_options= in odeint_adjoint), or an "
                "adaptive adjoint method"
            )

    def tape(self, problem: Problem, stats: SolveStats) -> _AdjointTape:
        return _AdjointTape(self, problem, stats)

    def _backward_setup(
        self, problem: Problem, n_z: int, n_p: int
    ) -> tuple[Solver, Options, Tolerance]:
        """The solver, options and tolerance of the augmented solve."""
        opts, norm = self._parsed_options()
        if opts is None:
            opts = replace(problem.options, norm=None)
        if self.method is not None:
            cls = SOLVERS[self.method]
            solver = ALF(eta=opts.eta) if cls is ALF else cls()
        elif isinstance(problem.solver, ALF) and opts.eta != problem.solver.eta:
            solver = ALF(eta=opts.eta)
        else:
            solver = problem.solver
        fwd = problem.tol
        rtol = _augmented_tol(self.rtol, fwd.rtol, n_p)
        atol = _augmented_tol(self.atol, fwd.atol, n_p)
        return solver, opts, Tolerance(rtol=rtol, atol=atol, norm=_norm(norm, n_z, n_p))


def _augmented_tol(own: float | None, fwd: float | torch.Tensor, n_p: int) -> float | torch.Tensor:
    if own is not None:
        return float(own)
    if isinstance(fwd, torch.Tensor):  # per-tensor tolerances of a tuple state: reuse for z, a
        return torch.cat([fwd, fwd, fwd.min().expand(n_p)])
    return fwd


def _norm(norm: Any, n_z: int, n_p: int) -> Callable[[torch.Tensor], Any]:
    if callable(norm):
        return norm
    with_params = norm == "mixed" and n_p > 0

    def mixed(x: torch.Tensor) -> torch.Tensor:
        err = torch.maximum(rms_norm(x[:n_z]), rms_norm(x[n_z : 2 * n_z]))
        return torch.maximum(err, rms_norm(x[2 * n_z :])) if with_params else err

    return mixed


class _AdjointTape(Tape):
    """Keeps the outputs only; the backward pass integrates the augmented system backwards."""

    keep_outputs = True

    def finish(self, ys, y_n, state_n, record: StepRecord) -> int:
        self.record = record
        return ys.nbytes + 8 * len(record.ts)

    def backward(self, saved: Saved, grad_ys: torch.Tensor):
        return _backsolve(self, saved.ys, saved.params, grad_ys)


class _AugmentedRHS(RHS):
    """``d[z, a, θ̄]/dr`` in reversed normalised time ``r = −s`` over a flat augmented state.

    In ``s``: ``dz/ds = F``, ``da/ds = −aᵀ∂F/∂z``, ``dθ̄/ds = −aᵀ∂F/∂θ``; stepping forward in
    ``r`` negates all three. ``sign = −f.sign`` so that error messages report the user's time.
    """

    def __init__(self, f: RHS, params: tuple[torch.Tensor, ...], shape: torch.Size) -> None:
        n_z = shape.numel()
        n = 2 * n_z + sum(p.numel() for p in params)
        st = f.structure
        super().__init__(f.func, Structure(False, (torch.Size([n]),), st.dtype, st.device), -f.sign)
        self.f, self.params, self.shape, self.n_z = f, params, shape, n_z

    def __call__(self, t: float, y: torch.Tensor, perturb: int = 0) -> torch.Tensor:
        self.nfe += 1
        n_z, dtype = self.n_z, y.dtype
        with torch.enable_grad():
            z = y[:n_z].detach().view(self.shape).requires_grad_(True)
            a = y[n_z : 2 * n_z].view(self.shape)
            fz = self.f(-t, z, perturb=-perturb)  # a hint in r = -s is the opposite one in s
            inputs = (z, *self.params)
            if fz.requires_grad:
                vjps = engine_grad((fz,), inputs, (a,))  # retains a graph shared with params
            else:
                vjps = (None,) * len(inputs)
        parts = [-fz.detach().reshape(-1)]
        for g, x in zip(vjps, inputs, strict=True):
            if g is None:
                parts.append(torch.zeros(x.numel(), dtype=dtype, device=y.device))
            else:
                parts.append(g.reshape(-1).to(dtype))
        return torch.cat(parts)


def _backsolve(
    tape: _AdjointTape, ys: torch.Tensor, params: list[torch.Tensor], grad_ys: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    problem, record = tape.problem, tape.record
    shape, n_z = ys.shape[1:], ys[0].numel()
    sizes = [p.numel() for p in params]
    solver, opts, tol = tape.method._backward_setup(problem, n_z, sum(sizes))
    replay = problem.fixed and opts.step_size == problem.options.step_size
    aug = _AugmentedRHS(problem.f, tuple(params), shape)
    t_out, sign = problem.t_out, problem.f.sign
    a = grad_ys[-1].reshape(-1)
    theta = torch.zeros(sum(sizes), dtype=ys.dtype, device=ys.device)
    for k in range(len(t_out) - 1, 0, -1):
        s1, s0 = t_out[k], t_out[k - 1]
        seg_opts = opts
        if replay:  # the forward grid, reversed (step_t is in the user's time sign * s)
            inner = tuple(sign * t for t in reversed(record.ts) if s0 < t < s1)
            seg_opts = replace(opts, step_size=s1 - s0, step_t=inner)
        seg = Problem(f=aug, solver=solver, options=seg_opts, tol=tol, t_out=[-s1, -s0])
        x = torch.cat([ys[k].reshape(-1), a, theta])
        _, x, _, _ = integrate(seg, x, solver.init(aug, -s1, x))
        a = x[n_z : 2 * n_z] + grad_ys[k - 1].reshape(-1)
        theta = x[2 * n_z :]
    grads = [
        g.view_as(p).to(p.dtype) for g, p in zip(torch.split(theta, sizes), params, strict=True)
    ]
    return a.view(shape), grads
