"""MALI: the reversible backward pass, for ALF and any solver of the reversible contract, with a
safety net that never returns a gradient spoiled by reconstruction round-off."""

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
from ._safety import budget_interval, coarsest, drift_interval, replay_segment
from ._sweep import Saved, SweepMethod, Tape
from .base import register


class ReconstructionDriftWarning(RuntimeWarning):
    """MALI's reconstruction drifted (``on_drift="warn"``), or the solver's consistency check
    (``SolveStats.parasitic``) says the forward solution is far from the ODE's."""


class _MaliTape(Tape):
    """Keeps the final point, ``state0`` (with the graph of ``solver.init``) and every K-th point
    (K from :meth:`Mali.interval` and the memory budget); the backward pass is the solver's
    reverse sweep, segment by segment, with exact recomputation of a segment that drifted."""

    keep_init_graph = True

    def __init__(self, method: Mali, problem: Problem, stats: SolveStats) -> None:
        super().__init__(method, problem, stats)
        self.checkpoints: dict[int, tuple[torch.Tensor, Any]] = {}
        self.k: int | None = None
        self.slots: int | None = None  # points the budget allows besides the fixed ones

    def init(self, y0: torch.Tensor) -> Any:
        self.state0 = super().init(y0)
        method: Mali = self.method
        self.k = method.interval(self.problem.solver, y0.dtype)
        budget = method.memory_budget
        if budget is not None:
            self.point_bytes = _nbytes([y0, *_state.leaves(self.state0)])
            fixed = self.point_bytes + tensor_bytes(_state.leaves(self.state0))
            if self.problem.fixed:
                fixed += 8 * len(self.problem.fixed_grid())
            self.slots = max(0, (budget - fixed) // self.point_bytes)
            if self.problem.fixed:
                n = len(self.problem.fixed_grid()) - 1
                self.k = coarsest(self.k, budget_interval(n, self.slots))
        if self.k is not None:
            self.on_step = self._store
        return self.state0

    def _store(self, i: int, y: torch.Tensor, state: Any) -> None:
        if i and i % self.k == 0:
            self.checkpoints[i] = (y, state)
            if self.slots is not None and len(self.checkpoints) > self.slots:
                self._thin()  # an adaptive grid outgrew the budget: keep every other point

    def _thin(self) -> None:
        self.k *= 2
        self.checkpoints = {i: p for i, p in self.checkpoints.items() if i % self.k == 0}

    def finish(self, ys, y_n, state_n, record: StepRecord) -> int:
        self.record, self.final = record, (y_n, state_n)
        memory = self._memory()
        budget = self.method.memory_budget
        while budget is not None and memory > budget and self.checkpoints:
            self._thin()
            memory = self._memory()
        if budget is not None and memory > budget:
            raise ValueError(
                f"Mali(memory_budget={budget}) is below what MALI must keep for this solve: "
                f"{memory} bytes (the final point, the initial solver state and "
                f"{len(record.ts)} step times): raise memory_budget to at least {memory}, or "
                "drop it"
            )
        self.stats.checkpoint_interval = self.k if self.checkpoints else None
        return memory

    def _memory(self) -> int:
        y_n, state_n = self.final
        kept = [y_n, *_state.leaves(state_n), *_state.leaves(self.state0)]
        kept += [t for y, s in self.checkpoints.values() for t in (y, *_state.leaves(s))]
        return tensor_bytes(kept) + 8 * len(self.record.ts)

    def backward(self, saved: Saved, grad_ys: torch.Tensor):
        record, ts, problem, method = self.record, self.record.ts, self.problem, self.method
        solver: ReversibleSolver = problem.solver
        cot = output_cotangents(grad_ys, record.out_steps)
        sweep = solver.reverse_sweep(problem.f, saved.params, *self.final)
        stored = {0: (saved.y0, self.state0), **self.checkpoints}
        drift_tol, parasitic_tol = method.drift_tol, method.parasitic_limit(solver, ts)
        can_fall_back = method.fallback and (drift_tol is not None or parasitic_tol is not None)
        drift, fallbacks, recomputed = 0.0, 0, 0
        parasitic: float | None = 0.0 if sweep.checks_consistency else None
        measured = not sweep.checks_consistency  # the consistency check has been read
        exact = False  # the parasitic check failed: recompute every remaining segment exactly
        hi = record.n_steps
        for lo in sorted(stored, reverse=True):
            if lo >= hi:
                continue
            before = None  # the cotangents and gradients at ts[hi], for an exact replay
            if can_fall_back and (exact or hi < record.n_steps):
                cot_y, cot_s = sweep.cotangents()
                cots = (cot_y.clone(), _state.tree_map(torch.clone, cot_s))
                before = (cots, [g.clone() for g in sweep.param_grads])
            replay = exact
            if not exact:
                for i in range(hi - 1, lo - 1, -1):
                    start = stored[lo] if i == lo else None
                    sweep.step(ts[i], ts[i + 1] - ts[i], cot.get(i), start=start)
                consistency = [] if measured else sweep.consistency()
                n_check = len(consistency) // 2
                ratios = _ratios(consistency + _point_gaps(sweep.point(), stored[lo]))  # 1 sync
                seg_drift = max(ratios[n_check:])
                if n_check:
                    parasitic, measured = ratios[0], True
                    exact = (
                        can_fall_back and parasitic_tol is not None and parasitic > parasitic_tol
                    )
                bad = drift_tol is not None and not seg_drift <= drift_tol
                replay = can_fall_back and (exact or bad)
                if not replay:
                    drift = max(drift, seg_drift)
            if replay:
                cot_hi, grads_hi = before if before is not None else _zero_cotangents(sweep)
                cot_y, cot_s, grads, steps = replay_segment(
                    problem, record, lo, hi, stored[lo], cot_hi, cot, saved.params,
                    self._free_slots(),
                )  # fmt: skip
                _refuse_non_finite(cot_y, solver)
                add_into(grads_hi, grads)
                sweep.param_grads = grads_hi
                sweep.restart(*stored[lo], cotangents=(cot_y, cot_s))
                fallbacks, recomputed = fallbacks + 1, recomputed + steps
            elif lo:
                sweep.restart(*stored[lo])
            hi = lo
        grad_y0, cot_state0 = sweep.cotangents()
        grads = sweep.param_grads
        pulled = self.through_init(saved.y0, saved.params, cot_state0)
        if pulled is not None:
            add_into(grads, pulled[1])
            grad_y0 = grad_y0 + pulled[0]
        if -1 in cot:
            grad_y0 = grad_y0 + cot[-1]
        self.stats.drift, self.stats.parasitic = drift, parasitic
        self.stats.fallback_segments = fallbacks
        self.stats.recomputed_steps = recomputed
        _check_drift(method, solver, drift, parasitic, method.parasitic_limit(solver, ts))
        return grad_y0, grads

    def _free_slots(self) -> int | None:
        """Points a fallback may keep at once: the budget's unused slots (``None``: no budget)."""
        if self.slots is None:
            return None
        return max(0, self.slots - len(self.checkpoints))


@register
@dataclass(frozen=True)
class Mali(SweepMethod):
    """MALI (Zhuang et al., ICLR 2021): exact gradients at constant memory with a reversible solver.

    The forward pass runs under ``no_grad`` and keeps the final point, the initial solver state
    (with the graph of its one evaluation, unless ``func`` has buffers), the accepted time points
    and, when round-off needs them, a point every ``K`` steps. The backward pass walks the grid in
    reverse, rebuilds every step with the solver's exact algebraic inverse and differentiates it
    locally — fused: one evaluation of ``func`` with graph and one vector–Jacobian product per
    step for ALF and reversible Heun (the wrapper ``reversible_rk``: its two base steps).

    Solvers: any :class:`~torchmali.solvers.base.ReversibleSolver` — ``method="alf"`` (any
    ``eta != 0.5``), ``"reversible_heun"``, ``"reversible_rk"``; fixed or adaptive grids.

    Gradient: equal to direct backpropagation through the same grid up to reconstruction
    round-off, which the safety net keeps below ``drift_tol`` (relative) or removes:

    1. *Bound by construction* (``checkpoint_every="auto"``): a scheme whose inverse amplifies
       round-off by ``ρ > 1`` per step (damped ALF: ``1/|1 − 2η|``; the wrapper: ``1/λ``) gets a
       stored point every ``K`` steps, the largest ``K`` whose modelled drift
       ``C ε (ρ^K − 1)/(ρ − 1)`` stays below ``drift_tol`` (ε of the state's dtype; η = 0.75 in
       float64: K = 35). For ``ρ = 1`` (undamped ALF, reversible Heun) no interval is imposed:
       the scheme adds no amplification, and how much the dynamics contract is unknown before the
       solve — the measurement below decides, at no cost on healthy solves.
    2. *Measure*: at every stored point (and at ``t0``) the reconstruction is compared with the
       stored one — the relative drift of that segment.
    3. *Fall back*: a segment whose drift exceeds ``drift_tol`` is reversed again exactly from
       its stored start (recomputed forward, one graph per step, as ``gradient="checkpoint"``
       does), and the sweep continues from there with the exact cotangents. The gradient is then
       exact for that segment; ``SolveStats.fallback_segments`` counts them and
       ``recomputed_steps`` the steps recomputed.

    Memory: ``N_z (N_f + 2 + N_t/K)`` plus ``N_t`` floats; with ``memory_budget`` at most that
    many bytes of stored states (``SolveStats.memory_bytes``). Cost: one extra evaluation of
    ``func`` per step compared with direct backpropagation, plus any fallback. No double backward
    (use ``"direct"``).

    ``SolveStats.parasitic`` reports the solver's consistency check (ALF: ``|v_N − f| / |f|``;
    two-track schemes: ``|y_N − ŷ_N| / |y_N|``); above ``parasitic_tol`` a
    :class:`ReconstructionDriftWarning` says the forward solution is far from the ODE's (the
    gradient is still exact for the discrete solve).

    Args:
        drift_tol: largest relative reconstruction drift of a segment accepted in the gradient
            (``None``: no bound, no fallback, the drift is only reported).
        parasitic_tol: consistency gap above which to warn and recompute exactly (``None``:
            only report). ``"auto"`` (default): the solver's ``consistency_limit`` — 0.5 for ALF
            and reversible Heun (healthy solves measure ``1e-6``–``1e-2``); for
            ``reversible_rk``, whose two tracks part by the base method's accumulated local
            error on healthy solves, ``max(1e-3, 10 T h_max^p)`` (``p`` the base's order).
        on_drift: what happens to a drift above ``drift_tol`` that was not recomputed (only with
            ``fallback=False``): ``"raise"`` a ``RuntimeError`` naming the fix (default), or
            ``"warn"`` (a :class:`ReconstructionDriftWarning`) and return the inaccurate gradient.
        checkpoint_every: ``"auto"`` (default: the interval of point 1, none for ρ = 1), an
            integer ``K`` (a point every K accepted steps), or ``None`` (no intermediate points:
            minimal memory, a fallback then recomputes the whole solve).
        memory_budget: bytes MALI may keep (``SolveStats.memory_bytes``): the interval becomes the
            coarser of ``checkpoint_every``'s and the one whose points fit; a fallback keeps at
            most the unused slots at once (binomial schedule). On adaptive grids, where the number
            of steps is unknown in advance, the points are thinned (every other one dropped)
            whenever they outgrow the budget.
        fallback: recompute drifting segments exactly (default). ``False``: the drift is reported
            and ``on_drift`` decides.

    Raises:
        TypeError, ValueError: an argument of the wrong type or out of range; a
            ``memory_budget`` below what the solve must keep (at the forward pass).
        RuntimeError: at the backward pass, a drift above ``drift_tol`` with ``fallback=False``
            and ``on_drift="raise"``, or a non-finite gradient.
    """

    name = "mali"
    aliases = ("reversible",)
    needs_reversible = True
    drift_tol: float | None = 1e-4
    parasitic_tol: float | Literal["auto"] | None = "auto"
    on_drift: Literal["warn", "raise"] = "raise"
    checkpoint_every: int | Literal["auto"] | None = "auto"
    memory_budget: int | None = None
    fallback: bool = True

    def __post_init__(self) -> None:
        for key in ("drift_tol", "parasitic_tol"):
            value = getattr(self, key)
            if value is not None and not (key == "parasitic_tol" and value == "auto"):
                example = f"Mali({key}=0.5), or None to only report"
                object.__setattr__(self, key, _validate.number("Mali", key, value, example))
        _validate.choice("Mali", "on_drift", self.on_drift, ("warn", "raise"))
        if self.checkpoint_every is not None and self.checkpoint_every != "auto":
            k = _validate.integer(
                "Mali", "checkpoint_every", self.checkpoint_every,
                "Mali(checkpoint_every=10), 'auto' (the default) or None for no checkpoints",
            )  # fmt: skip
            object.__setattr__(self, "checkpoint_every", k)
        if self.memory_budget is not None:
            budget = _validate.integer(
                "Mali", "memory_budget", self.memory_budget, "Mali(memory_budget=2**20) (bytes)"
            )
            object.__setattr__(self, "memory_budget", budget)
        if not isinstance(self.fallback, bool):
            raise TypeError(
                f"Mali(fallback=...): fallback must be True or False, got {self.fallback!r} "
                f"({type(self.fallback).__name__}); e.g. Mali(fallback=True)"
            )

    def parasitic_limit(self, solver: Solver, ts: list[float]) -> float | None:
        """``parasitic_tol``, with ``"auto"`` resolved by the solver for the accepted grid
        ``ts`` (:meth:`~torchmali.solvers.base.ReversibleSolver.consistency_limit`)."""
        if self.parasitic_tol == "auto":
            return solver.consistency_limit(ts)
        return self.parasitic_tol

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

    def interval(self, solver: ReversibleSolver, dtype: torch.dtype) -> int | None:
        """The checkpoint interval before any memory budget: ``checkpoint_every`` if an integer,
        ``None`` if ``None``, else (``"auto"``) the drift bound of ``solver``'s amplification
        (:func:`torchmali.gradients._safety.drift_interval`)."""
        if self.checkpoint_every != "auto":
            return self.checkpoint_every
        return drift_interval(solver.inverse_amplification(), dtype, self.drift_tol)

    def tape(self, problem: Problem, stats: SolveStats) -> _MaliTape:
        return _MaliTape(self, problem, stats)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _zero_cotangents(sweep) -> tuple[tuple[torch.Tensor, None], list[torch.Tensor]]:
    """The cotangents at the final point before the sweep started (zero)."""
    return (torch.zeros_like(sweep.cot_y), None), [torch.zeros_like(g) for g in sweep.param_grads]


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


def _refuse_non_finite(cot_y: torch.Tensor, solver: ReversibleSolver) -> None:
    if not bool(torch.isfinite(cot_y).all()):
        raise RuntimeError(
            "MALI's exact recomputation of a drifting segment gave a non-finite gradient "
            f"(NaN/Inf): func overflows when re-evaluated along the {solver.label} trajectory. "
            "Check func for overflow, use a smaller step, float64, or gradient='checkpoint'"
        )


def _check_drift(
    cfg: Mali, solver: ReversibleSolver, drift: float, parasitic: float | None, limit: float | None
) -> None:
    # The warning's text is fixed for each cause, so Python shows it once per place instead of
    # once per backward pass of a training run; the measured values are in SolveStats (and in
    # the error raised with on_drift="raise").
    fix = (
        "Mali(fallback=True) (the default) to recompute drifting segments exactly, "
        "Mali(checkpoint_every=K) with a smaller K, a shorter horizon, or gradient='checkpoint'"
    )
    if not math.isfinite(drift):  # whatever on_drift says: never worth an optimizer step
        raise RuntimeError(
            "MALI's reconstruction of the trajectory overflowed (SolveStats.drift is not "
            f"finite), so the gradient is NaN or infinite. {solver.drift_hint()}, {fix}"
        )
    if cfg.drift_tol is not None and drift > cfg.drift_tol:
        message = (
            f"MALI reconstruction drift exceeds drift_tol={cfg.drift_tol:.3g} "
            f"(SolveStats.drift): the reversed {solver.label} trajectory does not match the "
            f"forward one, so the gradient is inaccurate. {solver.drift_hint()}, {fix}"
        )
        if cfg.on_drift == "raise":
            raise RuntimeError(f"{message} (measured: drift {drift:.3g})")
        warnings.warn(message, ReconstructionDriftWarning, stacklevel=3)
    if limit is not None and parasitic is not None and parasitic > limit:
        warnings.warn(solver.consistency_message(limit), ReconstructionDriftWarning, stacklevel=3)
