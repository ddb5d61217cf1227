"""``method="scipy_solver"``: ``scipy.integrate.solve_ivp`` behind torchdiffeq's interface.

Forward only: the solve runs in NumPy, outside autograd, so it has no gradient. When ``y0``, the
output times or tensors of ``func`` require grad, the outputs are still connected to them through
an autograd function whose backward raises an error naming the fix — never a silently detached
result. Every gradient method other than ``direct`` is refused up front.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._errors import SolverError
from .._options import Options
from .._tree import module_of
from .base import Func, Solver, StepResult
from .config import SolverOption, choice

if TYPE_CHECKING:
    from .._loop import Problem

#: The ``solve_ivp`` methods accepted as ``options={"solver": ...}``.
SCIPY_METHODS = ("LSODA", "RK45", "RK23", "DOP853", "Radau", "BDF")

# The generic options scipy_solver passes on to solve_ivp; any other one set is an error.
_PASSED = ("min_step", "max_step", "first_step")


class ScipySolver(Solver):
    """``scipy.integrate.solve_ivp`` (torchdiffeq's ``scipy_solver``): forward only.

    Options (``options=``): ``solver`` (one of ``LSODA`` (default), ``RK45``, ``RK23``, ``DOP853``,
    ``Radau``, ``BDF``), and ``min_step`` (LSODA), ``max_step``, ``first_step``. ``rtol`` and
    ``atol`` are the solve's. The state is solved in float64 (complex128 for complex states) and
    cast back. ``Solution.ts`` holds scipy's accepted step times.

    No gradient: ``gradient="direct"`` returns outputs whose backward raises; every other
    gradient method is refused with a ``ValueError``. Use a torch solver to differentiate
    (``"dopri5"``, or ``"radauIIA5"`` / ``"implicit_euler"`` for stiff problems).
    """

    name = "scipy_solver"
    order = 0
    adaptive = True
    forward_only = True
    solver_options = {
        "solver": SolverOption("LSODA", choice(SCIPY_METHODS), "the solve_ivp method"),
    }

    def __init__(self, perturb: bool = False, solver: str = "LSODA") -> None:
        if perturb:
            raise ValueError(
                "options['perturb'] has no effect with method='scipy_solver' (scipy chooses its "
                "own evaluation times): remove it"
            )
        self.solver = choice(SCIPY_METHODS)("solver", solver)

    def __repr__(self) -> str:
        return f"ScipySolver(solver={self.solver!r})"

    def step(
        self, f: Func, t0: float, h: float, y0: torch.Tensor, state: Any, with_error: bool = True
    ) -> StepResult:
        raise TypeError(
            "scipy_solver runs the whole solve in scipy.integrate.solve_ivp; it has no step of "
            "its own to drive (and no gradient): use another method"
        )

    def integrate(
        self, problem: Problem, y0: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[float]]:
        """Solve at every ``problem.t_out``: the outputs (flat) and scipy's accepted step times."""
        t_out = problem.t_out
        if len(t_out) == 1:
            return [y0.detach()], list(t_out)
        solve_ivp = _solve_ivp()
        f, o = problem.f, problem.options
        y_np = y0.detach().cpu().numpy().reshape(-1)
        np_dtype = "complex128" if y0.is_complex() else "float64"

        def rhs(s: float, y) -> Any:
            with torch.no_grad():
                yt = torch.as_tensor(y, device=y0.device).to(y0.dtype).reshape(y0.shape)
                return f(float(s), yt).cpu().numpy().reshape(-1).astype(np_dtype)

        kwargs: dict[str, Any] = {"max_step": o.max_step}
        if self.solver == "LSODA" or o.min_step != 0.0:
            kwargs["min_step"] = o.min_step
        if o.first_step is not None:
            kwargs["first_step"] = o.first_step
        sol = solve_ivp(
            rhs,
            (t_out[0], t_out[-1]),
            y_np.astype(np_dtype),
            method=self.solver,
            t_eval=t_out,
            rtol=_numpy(problem.tol.rtol),
            atol=_numpy(problem.tol.atol),
            dense_output=True,
            **kwargs,
        )
        if sol.status != 0:
            t_fail = float(sol.t[-1]) if len(sol.t) else t_out[0]
            raise SolverError(
                f"scipy.integrate.solve_ivp(method={self.solver!r}) failed: {sol.message} (at "
                f"t={problem.user_time(t_fail):.6g}); try another options['solver'] or looser "
                "rtol/atol",
                problem.user_time(t_fail),
                0,
            )
        ys = torch.as_tensor(sol.y.T, device=y0.device).to(y0.dtype).reshape(-1, *y0.shape)
        outputs = [y0.detach()] + list(ys[1:].unbind(0))
        return outputs, [float(s) for s in sol.sol.ts]


def check_gradient(gradient_name: str) -> None:
    """Refuse every gradient method but ``direct`` (whose backward raises if it is reached)."""
    if gradient_name != "direct":
        raise ValueError(
            f"method='scipy_solver' solves in scipy.integrate.solve_ivp, outside torch: it has no "
            f"gradient, so gradient={gradient_name!r} cannot be used. Use a torch method to "
            "differentiate (e.g. 'dopri5', or 'radauIIA5' / 'implicit_euler' for stiff problems)"
        )


def check_options(problem_options: Any) -> None:
    """Refuse generic options that ``solve_ivp`` has no equivalent for."""
    defaults = Options()
    given = sorted(
        k
        for k in Options.keys()
        if k not in _PASSED and getattr(problem_options, k) != getattr(defaults, k)
    )
    if given:
        raise ValueError(
            f"option(s) {given} have no effect with method='scipy_solver', which passes only "
            f"{list(_PASSED)} and options['solver'] to scipy.integrate.solve_ivp: remove them"
        )


class _NoGradient(torch.autograd.Function):
    """Identity on the outputs; connects them to the inputs so that backward can refuse."""

    @staticmethod
    def forward(ctx, ys: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        return ys.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        raise RuntimeError(
            "method='scipy_solver' solves in scipy.integrate.solve_ivp, outside torch: its "
            "solution has no gradient. Use a torch method to differentiate (e.g. "
            "method='dopri5', or 'radauIIA5' / 'implicit_euler' for stiff problems), or detach "
            "the inputs (y0, t, the tensors of func) if no gradient is needed"
        )


def guard(ys: torch.Tensor, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``ys``, connected to those ``inputs`` that require grad by :class:`_NoGradient`."""
    needs = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    if not needs or not torch.is_grad_enabled():
        return ys
    return _NoGradient.apply(ys, *needs)


def trainables(func: Callable) -> list[torch.Tensor]:
    """Tensors requiring grad that ``func`` uses: a module's parameters, or tensors and modules
    in a closure or in default arguments."""
    module = module_of(func)
    if module is not None:
        return [p for p in module.parameters() if p.requires_grad]
    found: list[torch.Tensor] = []
    objs: list[Any] = []
    for cell in getattr(func, "__closure__", None) or ():
        try:
            objs.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    objs += list(getattr(func, "__defaults__", None) or ())
    for obj in objs:
        if isinstance(obj, torch.Tensor) and obj.requires_grad:
            found.append(obj)
        elif isinstance(obj, nn.Module):
            found += [p for p in obj.parameters() if p.requires_grad]
    return found


def _numpy(value: float | torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    return float(value)


def _solve_ivp():
    try:
        from scipy.integrate import solve_ivp
    except ImportError as e:  # pragma: no cover - scipy is a test dependency
        raise ImportError(
            "method='scipy_solver' needs SciPy: pip install scipy (or pip install "
            "'torchmali[scipy]')"
        ) from e
    return solve_ivp
