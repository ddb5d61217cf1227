"""The continuous backsolve adjoint (Chen et al., 2018): the baseline MALI and ANODE argue against."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import torch

from .. import _callbacks
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
            callable ``norm(scaled_error) -> scalar`` called as torchdiffeq calls it, with the
            tuple ``(t_adj, *y, *adj_y, *adj_params)`` (``y`` and ``adj_y`` the members of
            the state's structure; ``t_adj`` a 0-dim zero: the time adjoint is not
            integrated, so its error is 0). With a fixed-grid backward solve at the forward step size the
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
        # A fixed-grid adjoint method without step_size steps on each segment between output
        # times (torchdiffeq's behaviour); nothing to refuse.
        self._parsed_options()

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
        n = 2 * n_z + sum(_real_numel(p) for p in params)
        st = f.structure
        super().__init__(
            f.func, Structure(False, (torch.Size([n]),), st.real_dtype, st.device), -f.sign
        )
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
                parts.append(torch.zeros(_real_numel(x), dtype=dtype, device=y.device))
            else:
                parts.append(_real_flat(g).to(dtype))
        return torch.cat(parts)


def _backsolve(
    tape: _AdjointTape, ys: torch.Tensor, params: list[torch.Tensor], grad_ys: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    problem, record = tape.problem, tape.record
    shape, n_z = ys.shape[1:], ys[0].numel()
    sizes = [_real_numel(p) for p in params]
    solver, opts, tol = tape.method._backward_setup(problem, n_z, sum(sizes))
    _, norm = tape.method._parsed_options()
    if callable(norm):  # the user's norm, called as torchdiffeq calls it
        tol = replace(tol, norm=_user_norm(norm, problem.f.structure, shape, n_z, params))
    replay = problem.fixed and opts.step_size == problem.options.step_size
    aug = _AugmentedRHS(problem.f, tuple(params), shape)
    t_out, sign = problem.t_out, problem.f.sign
    a = grad_ys[-1].reshape(-1)
    theta = torch.zeros(sum(sizes), dtype=ys.dtype, device=ys.device)
    callbacks: Any = _UNSET
    for k in range(len(t_out) - 1, 0, -1):
        s1, s0 = t_out[k], t_out[k - 1]
        seg_opts = opts
        if replay:  # the forward grid, reversed (step_t is in the user's time sign * s)
            inner = tuple(sign * t for t in reversed(record.ts) if s0 < t < s1)
            seg_opts = replace(opts, step_size=s1 - s0, step_t=inner)
        seg = Problem(f=aug, solver=solver, options=seg_opts, tol=tol, t_out=[-s1, -s0])
        if callbacks is _UNSET:
            callbacks = _adjoint_callbacks(problem, seg, aug, params, shape, n_z)
        seg.callbacks = callbacks
        x = torch.cat([ys[k].reshape(-1), a, theta])
        _, x, _, _ = integrate(seg, x, solver.init(aug, -s1, x))
        a = x[n_z : 2 * n_z] + grad_ys[k - 1].reshape(-1)
        theta = x[2 * n_z :]
    grads = [_from_real(g, p) for g, p in zip(torch.split(theta, sizes), params, strict=True)]
    return a.view(shape), grads


_UNSET = object()


def _adjoint_callbacks(problem, seg, aug, params, shape, n_z):
    """``func``'s ``callback_*_adjoint`` for the backward solve, called as torchdiffeq calls them
    with the augmented state ``(y, adj_y, *adj_params)`` in the user's structure."""
    st = problem.f.structure
    sizes = [_real_numel(p) for p in params]

    def to_user(x: torch.Tensor) -> tuple:
        z, a = x[:n_z].view(shape), x[n_z : 2 * n_z].view(shape)
        thetas = torch.split(x[2 * n_z :], sizes) if sizes else ()
        return (
            st.unflatten(z),
            st.unflatten(a),
            *(_from_real(g, p) for g, p in zip(thetas, params, strict=True)),
        )

    return _callbacks.resolve(
        problem.f.func,
        _callbacks.ADJOINT_NAMES,
        method=seg.solver.name,
        valid=_callbacks.supported(seg.solver, seg.fixed),
        sign=aug.sign,
        t_dtype=torch.float64,
        device=st.device,
        to_user=to_user,
    )


# Complex parameters travel in the augmented (real) state as their real views: (re, im) pairs.
def _real_numel(x: torch.Tensor) -> int:
    return 2 * x.numel() if x.is_complex() else x.numel()


def _real_flat(g: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(g).reshape(-1) if g.is_complex() else g.reshape(-1)


def _from_real(g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    if p.is_complex():
        return torch.view_as_complex(g.reshape(*p.shape, 2).contiguous()).to(p.dtype)
    return g.view_as(p).to(p.dtype)


def _user_norm(norm, st, shape, n_z, params):
    """A user's adjoint norm, called with torchdiffeq's tuple ``(t_adj, *y, *adj_y, *params)``."""
    sizes = [_real_numel(p) for p in params]

    def call(x: torch.Tensor):
        ys, adj = st.unflatten(x[:n_z].view(shape)), st.unflatten(x[n_z : 2 * n_z].view(shape))
        ys, adj = (ys, adj) if st.is_tuple else ((ys,), (adj,))
        thetas = torch.split(x[2 * n_z :], sizes) if sizes else ()
        t_adj = torch.zeros((), dtype=x.dtype, device=x.device)
        p = (_from_real(g, q) for g, q in zip(thetas, params, strict=True))
        return norm((t_adj, *ys, *adj, *p))

    return call
