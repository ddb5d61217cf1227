"""``odeint`` / ``solve``: validate and normalise the inputs once, then dispatch.

Normalisation: tuple states are flattened into one tensor (complex states into their real
views), decreasing time is mapped to increasing ``s = -t`` (integrating ``dy/ds = -func(-s, y)``),
time is float64 while the state keeps its dtype. Solvers and gradient methods only ever see the
normalised problem.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import _callbacks
from ._bookkeeping import untouched
from ._events import solve_event
from ._grid import check_mode, constructed_grid
from ._loop import Problem, StepRecord
from ._norms import make_tolerance
from ._options import Options
from ._params import ParamsProbe, resolve_params
from ._precision import check_tolerances, working_dtype
from ._solution import Solution, SolveStats
from ._tree import RHS, Structure, module_of
from ._validate import check_times, tolerance_values
from .gradients import resolve
from .gradients.base import GradientMethod
from .solvers import ALF, SOLVERS
from .solvers.scipy_solver import check_gradient as check_scipy_gradient
from .solvers.scipy_solver import check_options as check_scipy_options
from .solvers.scipy_solver import guard as scipy_guard
from .solvers.scipy_solver import trainables as scipy_trainables
from .step_size import Tolerance

State = torch.Tensor | tuple[torch.Tensor, ...]


def odeint(
    func: Callable,
    y0: State,
    t: torch.Tensor | Sequence[float],
    rtol: float | Sequence[float] = 1e-7,
    atol: float | Sequence[float] = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    *,
    gradient: str | GradientMethod = "direct",
    params: Iterable[torch.Tensor] | None = None,
    event_fn: Callable | None = None,
) -> State | tuple[torch.Tensor, State]:
    """Integrate ``dy/dt = func(t, y)`` and return ``y`` at every time in ``t``.

    A drop-in replacement for ``torchdiffeq.odeint`` with a choice of gradient method (see
    ``docs/torchdiffeq.md`` for every difference).

    Args:
        func: any callable ``func(t, y)`` returning ``dy/dt`` with the structure, shape and dtype
            of ``y``; ``t`` is passed as a 0-dim tensor of the state's real dtype and device.
            Optional attributes ``callback_step``, ``callback_accept_step``,
            ``callback_reject_step`` (and their ``_adjoint`` variants) are called as torchdiffeq
            calls them (see :mod:`torchmali._callbacks`).
        y0: the initial state: a tensor of any shape (0-dim included), real or complex, or a
            tuple of such tensors (same dtype and device). Complex states are integrated through
            their real views; ``func`` sees complex tensors. bfloat16 and float16 states are
            integrated in float32 (the solver's state, error estimate and step control) while
            ``func`` runs in the state's dtype; the outputs are returned in that dtype and
            gradients flow through the casts.
        t: 1-D tensor (or sequence) of output times, strictly increasing or strictly
            decreasing; ``t[0]`` is the initial time.
        rtol: relative tolerance; a number, or one number per tensor of a tuple state. An
            adaptive solve of a bfloat16/float16 state refuses ``rtol`` below the unit roundoff
            of its dtype (0.0039 bfloat16, 4.9e-4 float16: func's derivatives are no more
            accurate); ``rtol=0`` (pure absolute control) is allowed with ``atol > 0``.
        atol: absolute tolerance; a number, or one number per tensor of a tuple state
            (``rtol`` and ``atol`` may not both be 0).
        method: solver name (default ``"dopri5"``), a key of ``torchmali.SOLVERS``. Fixed-grid
            methods step on ``t`` itself unless ``options`` has ``step_size`` or
            ``grid_constructor``; ``alf`` is adaptive unless given one of them.
        options: solver options, see :class:`torchmali.Options` for every key.
        gradient: ``"direct"``, ``"mali"``, ``"checkpoint"`` (``"aca"``, ``"anode"``),
            ``"binomial"`` (``"revolve"``), ``"adjoint"``, or a configuration object such as
            ``torchmali.Binomial(checkpoints=8)``.
        params: the tensors a memory-efficient gradient method (every method but ``direct``)
            differentiates besides ``y0``; default: the parameters of an ``nn.Module`` ``func``
            (or of the module of a bound method), else none. With autograd enabled, the solve's
            first evaluation of ``func`` is made with graph and its leaves are checked: a tensor
            requiring grad that ``func`` uses but ``params`` does not cover (a module-level
            ``net`` in a lambda, a list ``[W]``, ``functools.partial(g, A=W)``, a callable
            object's attribute, a global tensor in a module) raises a ``ValueError`` with its
            shape, instead of silently getting no gradient. Non-leaf tensors may be params.
            ``params=()`` explicitly differentiates none of ``func``'s tensors (no check).
            The check costs no evaluation (see ``torchmali._params``).
        event_fn: ``event_fn(t, y) -> tensor``: integrate from ``t[0]`` (in the direction of
            ``t[1]``, which is otherwise ignored; ``len(t)`` must be 2) until it changes sign
            (any element, for a multivariate function), as torchdiffeq does. The event time is
            located under ``no_grad``; the solution at that time is differentiable with every
            gradient method. Use :func:`torchmali.odeint_event` for gradients through the event
            time itself.

    Returns:
        The solution at every time in ``t``, stacked along a new leading dimension (a tuple of
        such tensors for a tuple ``y0``). With ``event_fn``: ``(event_t, solution)``, where
        ``solution`` holds ``y0`` and the state at ``event_t``.

    Raises:
        ValueError, TypeError: invalid input (the message names the fix).
        SolverError: the solve could not finish (step-size underflow, too many steps, NaN/Inf).
    """
    sol = solve(
        func,
        y0,
        t,
        rtol,
        atol,
        method,
        options,
        gradient=gradient,
        params=params,
        event_fn=event_fn,
    )
    return sol.ys if event_fn is None else (sol.event_t, sol.ys)


def solve(
    func: Callable,
    y0: State,
    t: torch.Tensor | Sequence[float],
    rtol: float | Sequence[float] = 1e-7,
    atol: float | Sequence[float] = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    *,
    gradient: str | GradientMethod = "direct",
    params: Iterable[torch.Tensor] | None = None,
    event_fn: Callable | None = None,
) -> Solution:
    """Like :func:`odeint`, but return a :class:`Solution` with the accepted grid and statistics
    (and ``event_t`` when ``event_fn`` is given)."""
    if event_fn is not None:
        if not callable(event_fn):
            raise TypeError(f"event_fn must be callable as event_fn(t, y), got {event_fn!r}")
        n = len(t)
        if n != 2:
            raise ValueError(
                f"We require len(t) == 2 when in event handling mode, but got len(t)={n}: pass "
                "t = [t0, t0 + 1] (the second time only gives the direction)"
            )
    s = setup(func, y0, t, rtol, atol, method, options, gradient, params)
    if s.forward is not None:
        if event_fn is not None:
            raise ValueError(
                f"method={s.stats.method!r} runs outside torchmali's loop and has no event "
                "handling (as in torchdiffeq): use an adaptive method such as 'dopri5'"
            )
        return s.forward()
    if event_fn is None:
        return s.run(s.problem, s.t_tensor)
    return solve_event(s, event_fn)


def solve_on_grid(
    func: Callable,
    y0: State,
    t: torch.Tensor | Sequence[float],
    grid: torch.Tensor | Sequence[float],
    rtol: float | Sequence[float] = 1e-7,
    atol: float | Sequence[float] = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    *,
    gradient: str | GradientMethod = "direct",
    params: Iterable[torch.Tensor] | None = None,
) -> Solution:
    """Replay an adaptive solve on its accepted grid (``Solution.ts`` of an earlier call with the
    same arguments), stepping exactly as it did: the same steps, stage times and hints, outputs
    inside steps by the same interpolation, no error control. The values equal the adaptive
    solve's bit for bit; used to differentiate one discrete solve in another dtype or with another
    gradient method (``torchmali bench``'s same-grid references).
    """
    s = setup(func, y0, t, rtol, atol, method, options, gradient, params)
    problem = s.problem
    if problem.fixed or s.forward is not None:
        raise ValueError(
            f"solve_on_grid replays an adaptive solve; method={s.stats.method!r} here steps on a "
            "fixed grid already: call solve() with options={'grid_constructor': ...} instead"
        )
    sign = problem.f.sign
    steps = [sign * float(v) for v in torch.as_tensor(grid, dtype=torch.float64).reshape(-1)]
    if steps[0] != problem.t_out[0] or steps[-1] < problem.t_out[-1] or steps != sorted(steps):
        raise ValueError(
            "grid must be the accepted grid of a solve from t[0] in the direction of t, ending "
            "at or after t[-1] (Solution.ts)"
        )
    return s.run(problem.replay(steps, callbacks=problem.callbacks), s.t_tensor)


@dataclass
class Setup:
    """A validated, normalised solve: the problem and everything needed to run it."""

    structure: Structure
    y0: State
    y0_flat: torch.Tensor
    t_tensor: torch.Tensor
    problem: Problem
    grad: GradientMethod
    params: tuple[torch.Tensor, ...]
    stats: SolveStats
    #: forward-only methods (``scipy_solver``): the whole solve, outside autograd
    forward: Callable[[], Solution] | None = None

    def run(self, problem: Problem, t_tensor: torch.Tensor) -> Solution:
        """Solve ``problem`` with the gradient method; ``t_tensor`` carries time gradients."""
        ys, record = self.run_flat(problem, t_tensor)
        ts = torch.tensor(record.ts, dtype=torch.float64) * problem.f.sign
        ys = self.structure.unflatten(ys.to(self.structure.real_dtype))
        return Solution(ys=ys, ts=ts, stats=self.stats)

    def run_flat(self, problem: Problem, t_tensor: torch.Tensor) -> tuple[torch.Tensor, StepRecord]:
        """:meth:`run`, returning the stacked flat outputs and the accepted grid."""
        grad, stats = self.grad, self.stats
        f, y0_flat = problem.f, self.y0_flat
        sign = f.sign
        s_tensor = t_tensor * sign if sign < 0 else t_tensor
        time_grad = s_tensor.requires_grad and torch.is_grad_enabled()
        if time_grad:
            y0_flat = _shift_start(f, problem.t_out[0], s_tensor[0], y0_flat)
        outputs, record = grad.run(problem, y0_flat, self.params, stats)
        if time_grad:
            outputs = [outputs[0]] + [
                _shift_output(f, problem.t_out[k], s_tensor[k], y)
                for k, y in enumerate(outputs)
                if k
            ]
            outputs[0] = self.y0_flat
        stats.nfe_forward = f.nfe
        stats.n_accepted = record.n_steps
        stats.n_rejected += record.n_rejected
        return torch.stack(outputs), record


def setup(func, y0, t, rtol, atol, method, options, gradient, params) -> Setup:
    """Validate and normalise the inputs of a solve (see :func:`odeint` for the arguments)."""
    structure = Structure.of(y0)
    y0_flat = structure.flatten(y0)
    if not y0_flat.is_floating_point():
        raise TypeError(
            f"y0 must be a floating point (or complex) tensor, got {structure.dtype}: use "
            "y0.float() or y0.double()"
        )
    if not bool(torch.isfinite(y0_flat).all()):
        raise ValueError("y0 contains NaN or Inf values: the initial state must be finite")
    t_tensor, t_list, sign = _check_t(t)
    method = "dopri5" if method is None else method
    if method not in SOLVERS:
        raise ValueError(f"unknown method {method!r}; valid methods are {sorted(SOLVERS)}")
    opts = Options.parse(options, SOLVERS[method])
    fixed = check_mode(method, SOLVERS[method], opts)
    tol = _tolerance(structure, rtol, atol, opts, fixed)
    solver = _make_solver(method, opts, tol)
    grad = resolve(gradient)
    grad.check(solver, fixed)
    if opts.jump_t and (grad.needs_reversible or grad.name == "symplectic"):
        raise ValueError(
            f"options['jump_t'] restarts the solver after every jump (a new derivative just "
            f"after it), which gradient={grad.name!r} does not differentiate (MALI's exact "
            "inverse cannot undo it; the symplectic adjoint's stage recursion does not contain "
            "it): use gradient='checkpoint' (exact too), or step_t instead"
        )
    if opts.interp == "cubic" and grad.name == "symplectic":
        raise ValueError(
            "options['interp'] = 'cubic' evaluates func once more at the end of a step for each "
            "interpolated output, which the symplectic adjoint's stage recursion does not "
            "differentiate: use interp='linear', or gradient='checkpoint' (exact too)"
        )
    f = RHS(func, structure, sign, seed=_rng_seed(func))
    work = working_dtype(structure.dtype)
    if work != structure.dtype:  # bfloat16 / float16: integrate in float32 (see _precision)
        f.working_dtype, y0_flat = work, y0_flat.to(work)
    problem = Problem(f=f, solver=solver, options=opts, tol=tol, t_out=[sign * v for v in t_list])
    if solver.forward_only:
        forward = lambda: _forward_only(problem, func, y0_flat, t_tensor, params, grad.name)  # noqa: E731
        stats = SolveStats(method=method, gradient=grad.name)
        return Setup(structure, y0, y0_flat, t_tensor, problem, grad, (), stats, forward)
    if opts.grid_constructor is not None:
        problem.grid = constructed_grid(opts.grid_constructor, func, y0, t_tensor, problem)
    t_dtype = t_tensor.dtype if fixed else torch.promote_types(opts.dtype, structure.real_dtype)
    problem.callbacks = _callbacks.resolve(
        func,
        _callbacks.NAMES,
        method=method,
        valid=_callbacks.supported(solver, fixed),
        sign=sign,
        t_dtype=t_dtype if t_dtype.is_floating_point else torch.float64,
        device=structure.device,
        to_user=structure.unflatten,
    )
    param_tuple = _params(func, params, grad, f)
    stats = SolveStats(method=method, gradient=grad.name)
    return Setup(structure, y0, y0_flat, t_tensor, problem, grad, param_tuple, stats)


def _check_t(t) -> tuple[torch.Tensor, list[float], float]:
    t = check_times(t)
    values = [float(v) for v in t.detach().to(torch.float64).cpu()]
    if not all(math.isfinite(v) for v in values):
        raise ValueError("t contains NaN or Inf values")
    diffs = [b - a for a, b in zip(values, values[1:], strict=False)]
    if all(d > 0 for d in diffs):
        sign = 1.0
    elif all(d < 0 for d in diffs):
        sign = -1.0
    else:
        raise ValueError(
            f"t must be strictly increasing or strictly decreasing, got {values[:8]}"
            + ("..." if len(values) > 8 else "")
        )
    return t, values, sign


def _make_solver(method: str, opts: Options, tol: Tolerance):
    """The solver of ``method``, configured by its own options (``opts.solver_options``)."""
    cls = SOLVERS[method]
    if opts.eta != 1.0 and cls is not ALF:
        raise ValueError(
            f"options['eta'] is the ALF damping; it has no effect with method={method!r}"
        )
    if cls.forward_only:
        check_scipy_options(opts)
        return cls(**opts.solver_options)
    if cls.reversible and opts.perturb:
        raise ValueError(
            f"options['perturb'] is not supported with the reversible method={method!r} (its "
            "algebraic inverse re-evaluates func at the forward pass's exact times): remove it"
        )
    if cls is ALF:
        return ALF(eta=opts.eta)
    kwargs = dict(opts.solver_options)
    if cls.uses_tolerance:
        kwargs["tol"] = tol
    if opts.perturb:
        kwargs["perturb"] = True
    return cls(**kwargs)


def _forward_only(problem: Problem, func, y0: torch.Tensor, t, params, gradient: str) -> Solution:
    """``scipy_solver``: solve outside autograd; the outputs refuse a backward pass."""
    check_scipy_gradient(gradient)
    outputs, ts = problem.solver.integrate(problem, y0)
    inputs = [y0, t, *(params or ()), *scipy_trainables(func)]
    ys = scipy_guard(torch.stack(outputs).to(problem.f.structure.dtype), inputs)
    structure, f = problem.f.structure, problem.f
    stats = SolveStats(method=problem.solver.name, gradient=gradient, nfe_forward=f.nfe)
    stats.n_accepted = len(ts) - 1
    return Solution(
        ys=structure.unflatten(ys), ts=torch.tensor(ts, dtype=torch.float64) * f.sign, stats=stats
    )


def _tolerance(structure: Structure, rtol, atol, opts: Options, fixed: bool) -> Tolerance:
    values = {}
    work = working_dtype(structure.real_dtype)
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, torch.Tensor) and value.requires_grad:
            raise ValueError(f"{name} cannot require gradient: pass {name}.detach()")
        v = structure.per_tensor(tolerance_values(value, name), name)
        values[name] = v.to(work) if isinstance(v, torch.Tensor) else v
    check_tolerances(values["rtol"], values["atol"], structure.dtype, not fixed)
    return make_tolerance(structure, values["rtol"], values["atol"], opts.norm)


def _params(func, params, grad: GradientMethod, f: RHS) -> tuple[torch.Tensor, ...]:
    """The tensors to differentiate; installs the check of func's tensors (see ``_params.py``)."""
    param_tuple, check = resolve_params(func, params)
    if check and grad.name != "direct" and torch.is_grad_enabled():
        f.probe = ParamsProbe(param_tuple, grad.name, module_of(func) is not None)
    return param_tuple


def _rng_seed(func) -> int | None:
    """A per-solve seed when ``func`` holds dropout layers in training mode, else ``None``.

    With a seed, every evaluation of ``func`` draws the same random numbers (one dropout mask per
    solve), so recomputation in a backward pass (checkpoint, binomial, mali) sees the masks of
    the forward pass. One number is drawn from the global RNG per solve.
    """
    module = module_of(func)
    if module is None:
        return None
    if not any(isinstance(m, _DROPOUT) and m.training and m.p > 0 for m in module.modules()):
        return None
    return int(torch.randint(0, 2**62, ()).item())


_DROPOUT = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


def _shift_start(f: RHS, s0: float, s0_tensor: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
    """Attach ``∂y(t_k)/∂t0 = -Φ(t_k, t0) f(t0, y0)`` by shifting y0 by ``-(t0 - t0') f``."""
    with torch.no_grad(), untouched(f.func, y0.device):
        f0 = f(s0, y0)
    delta = (s0_tensor - s0_tensor.detach()).to(y0.dtype)
    return y0 - delta * f0


def _shift_output(f: RHS, s: float, s_tensor: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Attach ``∂y(t_k)/∂t_k = f(t_k, y(t_k))`` to an output."""
    with torch.no_grad(), untouched(f.func, y.device):
        fk = f(s, y)
    delta = (s_tensor - s_tensor.detach()).to(y.dtype)
    return y + delta * fk
