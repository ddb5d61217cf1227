"""McCallum & Foster's reversible wrapper around any explicit Runge–Kutta method.

McCallum & Foster, "Efficient, Accurate and Stable Gradients for Neural ODEs" (arXiv 2410.11648):
any single-step method ``Φ_h(t, x)`` (here: an explicit Runge–Kutta tableau) becomes an
algebraically reversible two-track scheme with a coupling parameter ``λ`` in ``(0, 1]``. The
solution ``y`` and an auxiliary ``z`` (the solver state, initially ``z0 = y0``) advance by::

    y1 = λ (y0 − z0) + Φ_h(t0, z0)
    z1 = z0 + y1 − Φ_{−h}(t1, y1)

(a base step forward from ``z0``, then a base step backward from ``y1``), and the inverse is::

    z0 = z1 − y1 + Φ_{−h}(t1, y1)
    y0 = (y1 − Φ_h(t0, z0)) / λ + z0

Cost: two base steps per step (``2 s`` evaluations for an ``s``-stage tableau; a
first-same-as-last tableau skips its last stage on fixed grids). Order: the base method's.

Adaptive stepping (when the base tableau has an embedded estimate; the paper supports adaptive
steps, and diffrax's implementation controls on the backward base step's estimate): the error of
a step is, element by element, the largest of the two base steps' embedded estimates and of what
the gap ``d = y − z`` feeds into ``y`` this step, ``|d1 − λ d0| + (1 − λ) |d0|`` (its growth
beyond the natural decay ``λ`` — the parasitic mode — and the coupling term). The base estimates
alone cannot see the parasitic mode: on a linear system with eigenvalues −5 and −0.5 at
``rtol=1e-6`` they accepted dopri5's 27 steps and returned an error 600x the tolerance; with the gap term the controller
keeps the steps in the scheme's stable range (measured: ~100x more steps, error within
tolerance). Reported in docs/gradients.md ("Reversible solvers").

Stability (derived and measured, see docs/gradients.md, "Reversible solvers"): on ``y' = λy``
the one-step map of ``(y, z)`` has determinant ``λ_c`` (the coupling), so the inverse amplifies the parasitic
``y − z`` direction by ``1/λ_c`` per step (:meth:`ReversibleRK.inverse_amplification`). On the
negative real axis the parasitic root is ``λ_c e^{|hλ|}`` (the physical one ``e^{hλ}``): stable
only for ``|hλ| ≤ −ln λ_c`` — ``1e-3`` at the default 0.999, 0.105 at 0.9, 0.69 at 0.5. On the
imaginary axis the parasitic root stays at ``λ_c`` (measured up to ``|hλ| = 1.2``, where ALF
and reversible Heun are unstable). A smaller coupling buys forward stability with reconstruction amplification.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .._vjp import add_into, vjp
from .base import BackwardStep, Func, ReverseSweep, ReversibleSolver, StepResult
from .config import SolverOption
from .tableau import ButcherTableau, RungeKutta, lincomb


def _check_base(key: str, value: Any) -> str:
    """The base method: the name of an explicit Runge–Kutta solver of ``torchmali.SOLVERS``."""
    from . import SOLVERS  # the registry imports this module

    bases = sorted(n for n, c in SOLVERS.items() if _tableau_of(c) is not None)
    if not isinstance(value, str) or value not in bases:
        got = f"{value!r}" if isinstance(value, str) else type(value).__name__
        raise ValueError(
            f"options[{key!r}] must name an explicit Runge–Kutta method, one of {bases}; got "
            f"{got} (e.g. options={{{key!r}: 'dopri5'}})"
        )
    return value


def _check_coupling(key: str, value: Any) -> float:
    """The coupling ``λ``: a number in ``(0, 1]``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"options[{key!r}] must be a number in (0, 1], got {type(value).__name__} "
            f"(e.g. options={{{key!r}: 0.999}})"
        )
    value = float(value)
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(
            f"options[{key!r}] (the reversible coupling) must be in (0, 1], got {value}: the "
            "inverse divides by it; 0.999 is the usual choice"
        )
    return value


def _tableau_of(cls: Any) -> ButcherTableau | None:
    return (
        getattr(cls, "tableau", None)
        if isinstance(cls, type) and issubclass(cls, RungeKutta)
        else None
    )


def _base_step(tab: ButcherTableau, f: Func, t: float, h: float, x: torch.Tensor, with_error):
    """``(Φ_h(t, x), embedded error or None)`` for the tableau; a FSAL tableau's last stage is
    evaluated only when the error needs it."""
    ks = [f(t, x)]
    last = tab.stages - 1 if tab.fsal else tab.stages
    for i in range(1, last):
        ks.append(f(t + tab.c[i] * h, lincomb(x, h, tab.a[i], ks)))
    x1 = lincomb(x, h, tab.b, ks)
    if not with_error:
        return x1, None
    if tab.fsal and tab.b_error[-1] != 0.0:
        ks.append(f(t + h, x1))
    return x1, lincomb(torch.zeros_like(x), h, tab.b_error, ks)


class ReversibleRK(ReversibleSolver):
    """Any explicit Runge–Kutta method made algebraically reversible (McCallum & Foster 2024).

    ``method="reversible_rk"``; the solver-specific options are ``base`` (an explicit
    Runge–Kutta method name, default ``"dopri5"``) and ``coupling`` (``λ`` in ``(0, 1]``, default
    0.999, as in the paper). Order: the base method's; cost ``2 s`` evaluations per step; adaptive
    when the base tableau has an embedded error estimate (plus the track gap, see the module
    docstring), else fixed grid only.

    With ``gradient="mali"`` the gradient equals direct backpropagation through the same steps
    up to reconstruction round-off, at memory ``N_z (N_f' + 2)`` (the final ``y`` and ``z``;
    ``N_f'`` one base step's activations) plus the accepted times. Each reversed step evaluates
    both base steps with graph (the reconstruction needs them anyway) and takes one VJP through
    each: the cost of recomputing the step with its graph.

    Round-off: the inverse amplifies the ``y − z`` direction by ``1/λ`` per step (1.001 at
    0.999); ``Mali(checkpoint_every="auto")`` bounds it. Stability: see the module docstring.

    Args:
        base: the explicit Runge–Kutta method to wrap (a name of ``torchmali.SOLVERS``).
        coupling: the coupling parameter ``λ`` in ``(0, 1]``.

    Raises:
        ValueError, TypeError: an unknown base or a coupling outside ``(0, 1]``.
    """

    name = "reversible_rk"
    #: the floor of :meth:`consistency_limit`
    consistency_tol = 1e-3
    adaptive = True
    order = 5
    error_order = 5
    #: the solver-specific ``options=`` keys
    solver_options = {
        "base": SolverOption("dopri5", _check_base, "the explicit Runge–Kutta method to wrap"),
        "coupling": SolverOption(0.999, _check_coupling, "the coupling parameter λ in (0, 1]"),
    }

    def __init__(self, base: str | None = None, coupling: float | None = None) -> None:
        from . import SOLVERS

        base = self.solver_options["base"].default if base is None else base
        coupling = self.solver_options["coupling"].default if coupling is None else coupling
        self.base = _check_base("base", base)
        self.coupling = _check_coupling("coupling", coupling)
        cls = SOLVERS[self.base]
        self.tableau: ButcherTableau = cls.tableau
        self.order = cls.order
        self.adaptive = self.tableau.b_error is not None
        self.error_order = cls.error_order if self.adaptive else 0
        self.title = f"reversible {self.base} (coupling {self.coupling:g})"

    def consistency_limit(self, ts: Sequence[float]) -> float:
        """On a healthy solve the two tracks part by the base method's accumulated local error,
        about ``T h^p`` for ``N = T / h`` steps of order ``p``; an unstable coupling (dissipative
        dynamics, ``|h λ| > -ln λ``) parts them exponentially. Measured on oscillatory and MLP
        fields (dopri5, float32/64, fixed and adaptive): below 1e-5 when healthy; 1e-2-0.3 on a
        dissipative field at coupling 0.999 while the drift stayed below ``drift_tol``. Limit:
        ``max(1e-3, 10 T h_max^p)``."""
        if len(ts) < 2:
            return self.consistency_tol
        h_max = max(b - a for a, b in zip(ts[:-1], ts[1:], strict=True))
        return max(self.consistency_tol, 10.0 * (ts[-1] - ts[0]) * h_max**self.order)

    def __repr__(self) -> str:
        return f"ReversibleRK(base={self.base!r}, coupling={self.coupling!r})"

    def init(self, f: Func, t0: float, y0: torch.Tensor) -> torch.Tensor:
        return y0

    def step(
        self,
        f: Func,
        t0: float,
        h: float,
        y0: torch.Tensor,
        state: torch.Tensor,
        with_error: bool = True,
    ) -> StepResult:
        if with_error and not self.adaptive:
            raise ValueError(
                f"method='reversible_rk' with base {self.base!r} has no error estimate: pass "
                "options={'step_size': h}, or an adaptive base such as 'dopri5'"
            )
        z0, tab = state, self.tableau
        phi_z, err_fwd = _base_step(tab, f, t0, h, z0, with_error)
        y1 = torch.sub(y0, z0).mul_(self.coupling).add_(phi_z)
        phi_y, err_bwd = _base_step(tab, f, t0 + h, -h, y1, with_error)
        z1 = torch.sub(y1, phi_y).add_(z0)
        error = None
        if with_error:
            # what the gap d = y − z feeds into y this step: its growth beyond the natural decay
            # λ (the parasitic mode, ≈ h f'(y) d) and the coupling's (1 − λ) d
            d0 = torch.sub(y0, z0)
            gap = torch.sub(y1, z1).sub_(d0, alpha=self.coupling).abs_()
            gap.add_(d0.abs_(), alpha=1.0 - self.coupling)
            error = torch.maximum(torch.maximum(err_fwd.abs(), err_bwd.abs()), gap)
        return StepResult(y1=y1, error=error, state1=z1, dense=None)

    def inverse(self, f: Func, t1: float, h: float, y1: torch.Tensor, state1: torch.Tensor):
        tab = self.tableau
        phi_y, _ = _base_step(tab, f, t1, -h, y1, False)
        z0 = torch.sub(y1, phi_y).neg_().add_(state1)
        phi_z, _ = _base_step(tab, f, t1 - h, h, z0, False)
        y0 = torch.sub(y1, phi_z).div_(self.coupling).add_(z0)
        return y0, z0

    def backward_step(
        self,
        f: Func,
        t0: float,
        h: float,
        y1: torch.Tensor,
        state1: torch.Tensor,
        cot_y1: torch.Tensor,
        cot_state1: torch.Tensor | None,
        params: Sequence[torch.Tensor],
    ) -> BackwardStep:
        """Reconstruct and pull back, one base step's graph alive at a time. With ``(ȳ, z̄)`` the
        cotangents of ``(y1, z1)``, ``J∓`` the Jacobians of the two base steps::

            g  = ȳ + z̄ − J₋ᵀ z̄            (total cotangent of y1)
            ȳ0 = λ g,   z̄0 = z̄ − λ g + J₊ᵀ g
        """
        tab, lam = self.tableau, self.coupling
        t1 = t0 + h
        z_bar = torch.zeros_like(cot_y1) if cot_state1 is None else cot_state1
        with torch.enable_grad():
            y1_in = y1.detach().requires_grad_(True)
            phi_y, _ = _base_step(tab, f, t1, -h, y1_in, False)
        g, *p_minus = vjp((phi_y,), (y1_in, *params), (torch.neg(z_bar),))
        z0 = torch.sub(y1, phi_y.detach()).neg_().add_(state1)
        del phi_y, y1_in
        g = g.add_(cot_y1).add_(z_bar)
        with torch.enable_grad():
            z0_in = z0.detach().requires_grad_(True)
            phi_z, _ = _base_step(tab, f, t0, h, z0_in, False)
        z0_bar, *p_plus = vjp((phi_z,), (z0_in, *params), (g,))
        y0 = torch.sub(y1, phi_z.detach()).div_(lam).add_(z0)
        z0_bar = z0_bar.add_(z_bar).add_(g, alpha=-lam)
        add_into(p_plus, p_minus)
        return BackwardStep(y0=y0, state0=z0, cot_y0=g.mul_(lam), cot_state0=z0_bar,
                            param_grads=p_plus)  # fmt: skip

    def inverse_amplification(self) -> float:
        """``1/λ``: the inverse multiplies the parasitic ``y − z`` direction by it."""
        return 1.0 / self.coupling

    def reverse_sweep(self, f: Func, params, y1: torch.Tensor, state1: torch.Tensor):
        return TwoTrackSweep(self, f, params, y1, state1)

    def drift_hint(self) -> str:
        return (
            f"The reversible wrapper's inverse amplifies round-off by 1/coupling = "
            f"{self.inverse_amplification():.6g} per step, and more where the dynamics contract: "
            "use float64 or a coupling closer to 1"
        )

    def consistency_message(self, tol: float) -> str:
        return (
            f"{self.label}: the two tracks |y_N - z_N| / |y_N| differ by more than "
            f"parasitic_tol={tol:.3g} at the final time (SolveStats.parasitic): the wrapper is "
            "unstable here (on dissipative modes with |h lambda| above about -ln(coupling)), so "
            "the forward solution is far from the ODE's (MALI's gradient is exact for this "
            "discrete solve, not for the ODE). Use a smaller coupling (options={'coupling': "
            "0.9}: stable to |h lambda| = 0.1), a smaller step, or the base method itself with "
            "gradient='symplectic' or 'checkpoint'"
        )


class TwoTrackSweep(ReverseSweep):
    """The step-by-step sweep of a two-track scheme, with its consistency check: the gap between
    the tracks ``|y_N − z_N|`` against ``|y_N|``, measured at no evaluation."""

    checks_consistency = True

    def __init__(self, solver, f: Func, params, y1: torch.Tensor, state1: torch.Tensor) -> None:
        super().__init__(solver, f, params, y1, state1)
        self.gaps = [torch.linalg.vector_norm(y1 - state1), torch.linalg.vector_norm(y1)]

    def consistency(self) -> list[torch.Tensor]:
        return self.gaps
