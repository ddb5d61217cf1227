"""MALI: the reversible backward pass, for ALF and any solver of the reversible contract."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .. import _state
from .._loop import Problem, StepRecord
from .._solution import SolveStats
from .._vjp import add_into
from ..solvers import SOLVERS
from ..solvers.base import ReversibleSolver, Solver
from . import _validate
from ._backward import output_cotangents
from ._memory import tensor_bytes
from ._sweep import Saved, SweepMethod, Tape
from .base import register


class ReconstructionDriftWarning(RuntimeWarning):
    """MALI's reconstructed initial state differs from the stored one by more than ``drift_tol``."""


class _MaliTape(Tape):
    """Keeps the final point, ``state0`` (with the graph of ``solver.init``) and, with
    ``checkpoint_every=K``, every K-th point; the backward pass is the solver's reverse sweep."""

    keep_init_graph = True

    def __init__(self, method: Mali, problem: Problem, stats: SolveStats) -> None:
        super().__init__(method, problem, stats)
        self.checkpoints: dict[int, tuple[torch.Tensor, Any]] = {}
        if method.checkpoint_every:
            self.on_step = self._store

    def _store(self, i: int, y: torch.Tensor, state: Any) -> None:
        if i and i % self.method.checkpoint_every == 0:
            self.checkpoints[i] = (y, state)

    def init(self, y0: torch.Tensor) -> Any:
        self.state0 = super().init(y0)
        return self.state0

    def finish(self, ys, y_n, state_n, record: StepRecord) -> int:
        self.record, self.final = record, (y_n, state_n)
        kept = [y_n, *_state.leaves(state_n), *_state.leaves(self.state0)]
        kept += [t for y, s in self.checkpoints.values() for t in (y, *_state.leaves(s))]
        return tensor_bytes(kept) + 8 * len(record.ts)

    def backward(self, saved: Saved, grad_ys: torch.Tensor):
        record, ts, problem = self.record, self.record.ts, self.problem
        solver: ReversibleSolver = problem.solver
        cot = output_cotangents(grad_ys, record.out_steps)
        sweep = solver.reverse_sweep(problem.f, saved.params, *self.final)
        drift = 0.0
        for i in range(record.n_steps - 1, -1, -1):
            if i + 1 in self.checkpoints:
                ck = self.checkpoints[i + 1]
                drift = max(drift, *_ratios(_point_gaps(sweep.point(), ck)))
                sweep.restart(*ck)
            sweep.step(ts[i], ts[i + 1] - ts[i], cot.get(i))
        consistency = sweep.consistency()
        gaps = consistency + _point_gaps(sweep.point(), (saved.y0, self.state0))
        grad_y0, cot_state0 = sweep.cotangents()
        grads = sweep.param_grads
        pulled = self.through_init(saved.y0, saved.params, cot_state0)
        if pulled is not None:
            add_into(grads, pulled[1])
            grad_y0 = grad_y0 + pulled[0]
        if -1 in cot:
            grad_y0 = grad_y0 + cot[-1]
        ratios = _ratios(gaps)  # one device sync for every norm
        n_check = len(consistency) // 2
        drift = max(drift, *ratios[n_check:])
        parasitic = ratios[0] if n_check else (0.0 if sweep.checks_consistency else None)
        self.stats.drift, self.stats.parasitic = drift, parasitic
        _check_drift(self.method, solver, drift, parasitic)
        return grad_y0, grads


@register
@dataclass(frozen=True)
class Mali(SweepMethod):
    """MALI (Zhuang et al., ICLR 2021): exact gradients at constant memory with a reversible solver.

    The forward pass runs under ``no_grad`` and keeps only the final point, the initial solver
    state (with the graph of its one evaluation, unless ``func`` has buffers) and the accepted
    time points. The backward pass walks the grid in reverse, rebuilds every step with the
    solver's exact algebraic inverse and differentiates it locally — fused: one evaluation of
    ``func`` (with graph) and one vector–Jacobian product per step, and nothing else.

    Gradient: equal to direct backpropagation through the same grid up to reconstruction
    round-off. Memory: ``N_z (N_f + 1)`` plus ``N_t`` floats — constant in the number of steps.
    Cost: one extra evaluation of ``func`` per step compared with direct backpropagation.
    Requires a reversible solver (:class:`torchmali.solvers.ReversibleSolver`): ``method="alf"``
    (fixed or adaptive, any ``eta != 0.5``). No double backward (use ``"direct"``).

    Reconstruction drift (the relative difference between the reconstructed initial point and
    the stored one) is measured at the end of every backward pass and reported in
    ``SolveStats.drift``. Damped ALF (``eta < 1``) amplifies round-off in the inverse by
    ``1/|1 - 2 eta|`` per step; undamped ALF blows up on dissipative dynamics. Use ``drift_tol``
    to be told, and ``checkpoint_every`` to bound the drift.

    The same check catches ALF's instability on dissipative dynamics (``eta = 1``), where the
    reversal stays exact but the forward solution is swamped by the parasitic mode: the final
    velocity ``v_N`` then disagrees with ``f(t_N, z_N)`` (extrapolated from the backward pass's
    last two evaluations, at no extra cost); the relative gap is reported in
    ``SolveStats.parasitic`` and compared with ``parasitic_tol`` (other schemes report their own
    consistency check there, or ``None``).

    Args:
        drift_tol: relative drift above which to warn or raise (``None``: only report).
        parasitic_tol: relative gap between ``v_N`` and ``f(t_N, z_N)`` above which to warn or
            raise (``None``: only report). Healthy solves measure ``1e-6``–``1e-2``.
        on_drift: ``"warn"`` (a :class:`ReconstructionDriftWarning`) or ``"raise"`` (a
            ``RuntimeError``) when the drift exceeds ``drift_tol``.
        checkpoint_every: store the point every K accepted steps and restart the reconstruction
            from there in the backward pass: drift stays bounded at ``O(N_t / K)`` extra memory.

    Raises:
        TypeError, ValueError: an argument of the wrong type or out of range.
    """

    name = "mali"
    aliases = ("reversible",)
    needs_reversible = True
    drift_tol: float | None = 1e-4
    parasitic_tol: float | None = 0.5
    on_drift: Literal["warn", "raise"] = "warn"
    checkpoint_every: int | None = None

    def __post_init__(self) -> None:
        for key in ("drift_tol", "parasitic_tol"):
            value = getattr(self, key)
            if value is not None:
                example = f"Mali({key}={getattr(type(self), key):g}), or None to only report"
                object.__setattr__(self, key, _validate.number("Mali", key, value, example))
        _validate.choice("Mali", "on_drift", self.on_drift, ("warn", "raise"))
        if self.checkpoint_every is not None:
            k = _validate.integer(
                "Mali", "checkpoint_every", self.checkpoint_every,
                "Mali(checkpoint_every=10), or None for no checkpoints",
            )  # fmt: skip
            object.__setattr__(self, "checkpoint_every", k)

    def check(self, solver: Solver, problem_is_fixed: bool) -> None:
        if not isinstance(solver, ReversibleSolver):
            names = [n for n, c in SOLVERS.items() if issubclass(c, ReversibleSolver)]
            use = " or ".join(f"method={n!r}" for n in names)
            raise ValueError(
                f"gradient={self.name!r} needs a reversible solver: use {use} (got "
                f"{solver.name!r}); for other solvers use gradient='checkpoint' or 'binomial' "
                "(also exact)"
            )
        if solver.dense_output:
            raise ValueError(
                f"gradient={self.name!r} needs a reversible solver without dense output (the "
                f"grid must land on every output time); {solver.name!r} declares dense output"
            )

    def tape(self, problem: Problem, stats: SolveStats) -> _MaliTape:
        return _MaliTape(self, problem, stats)


def _point_gaps(point: tuple[torch.Tensor, Any], ref: tuple[torch.Tensor, Any]) -> list:
    """Norms ``[|a − b|, |b|]`` for each tensor of a point ``(y, state)`` and its reference."""
    (y, s), (y_ref, s_ref) = point, ref
    gaps = []
    for a, b in zip([y, *_state.leaves(s)], [y_ref, *_state.leaves(s_ref)], strict=True):
        gaps += [torch.linalg.vector_norm(a - b), torch.linalg.vector_norm(b)]
    return gaps


def _ratios(gaps: list[torch.Tensor]) -> list[float]:
    """``num / den`` for consecutive pairs of norms, read in one device sync (non-finite: inf)."""
    values = torch.stack(gaps).double().tolist()
    return [
        r if math.isfinite(r := num / (den + 1e-30)) else math.inf
        for num, den in zip(values[::2], values[1::2], strict=True)
    ]


def _check_drift(
    cfg: Mali, solver: ReversibleSolver, drift: float, parasitic: float | None
) -> None:
    # The warning's text is fixed for each cause, so Python shows it once per place instead of
    # once per backward pass of a training run; the measured values are in SolveStats (and in
    # the error raised with on_drift="raise").
    if not math.isfinite(drift):
        # whatever on_drift says: the gradient is NaN/Inf, never worth handing to an optimizer
        raise RuntimeError(
            "MALI's reconstruction of the trajectory overflowed (SolveStats.drift is not finite), "
            f"so the gradient is NaN or infinite. {solver.label}'s inverse expands round-off where "
            "the dynamics contract: use Mali(checkpoint_every=K), a shorter horizon, float64, or "
            "gradient='checkpoint'"
        )
    if cfg.drift_tol is not None and drift > cfg.drift_tol:
        message = (
            f"MALI reconstruction drift exceeds drift_tol={cfg.drift_tol:.3g} "
            f"(SolveStats.drift): the reversed {solver.label} trajectory does not match the "
            f"forward one, so the gradient is inaccurate. {solver.drift_hint()}, a shorter "
            "horizon, Mali(checkpoint_every=K), or gradient='checkpoint'"
        )
    elif cfg.parasitic_tol is not None and parasitic is not None and parasitic > cfg.parasitic_tol:
        message = solver.consistency_message(cfg.parasitic_tol)
    else:
        return
    if cfg.on_drift == "raise":
        measured = "n/a" if parasitic is None else f"{parasitic:.3g}"
        raise RuntimeError(f"{message} (measured: drift {drift:.3g}, parasitic {measured})")
    warnings.warn(message, ReconstructionDriftWarning, stacklevel=3)
