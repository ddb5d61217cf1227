"""MALI: the reversible backward pass of the asynchronous leapfrog solver."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch

from .._loop import integrate
from .._tree import module_of
from ..solvers.alf import ALF
from ._backward import (
    Context,
    FunctionMethod,
    add_into,
    output_cotangents,
    preserve_buffers,
    refuse_double_backward,
    vjp,
)
from ._memory import tensor_bytes
from .base import register


class ReconstructionDriftWarning(RuntimeWarning):
    """MALI's reconstructed initial state differs from the stored one by more than ``drift_tol``."""


@register
@dataclass(frozen=True)
class Mali(FunctionMethod):
    """MALI (Zhuang et al., ICLR 2021): exact gradients at constant memory with ALF.

    The forward pass runs under ``no_grad`` and keeps only the final ``(z, v)``, the
    initial ``v0`` (with the graph of its one evaluation, unless ``func`` has buffers) and the
    accepted time points. The backward pass walks the grid in reverse, rebuilds every step with
    ALF's exact algebraic inverse and differentiates it locally — fused: one evaluation of
    ``func`` (with graph) and one vector–Jacobian product per step, and nothing else.

    Gradient: equal to direct backpropagation through the same ALF grid up to reconstruction
    round-off. Memory: ``N_z (N_f + 1)`` plus ``N_t`` floats — constant in the number of steps.
    Cost: one extra evaluation of ``func`` per step compared with direct backpropagation.
    Requires ``method="alf"`` (fixed or adaptive, any ``eta != 0.5``).

    Reconstruction drift (the relative difference between the reconstructed ``(z0, v0)`` and the
    stored ones) is measured at the end of every backward pass and reported in
    ``SolveStats.drift``. Damped ALF (``eta < 1``) amplifies round-off in the inverse by
    ``1/|1 - 2 eta|`` per step; undamped ALF blows up on dissipative dynamics. Use ``drift_tol``
    to be told, and ``checkpoint_every`` to bound the drift.

    The same check catches ALF's instability on dissipative dynamics (``eta = 1``), where the
    reversal stays exact but the forward solution is swamped by the parasitic mode: the final
    velocity ``v_N`` then disagrees with ``f(t_N, z_N)`` (extrapolated from the backward pass's
    last two evaluations, at no extra cost); the relative gap is reported in
    ``SolveStats.parasitic`` and compared with ``parasitic_tol``.

    Args:
        drift_tol: relative drift above which to warn or raise (``None``: only report).
        parasitic_tol: relative gap between ``v_N`` and ``f(t_N, z_N)`` above which to warn or
            raise (``None``: only report). Healthy solves measure ``1e-6``–``1e-2``.
        on_drift: ``"warn"`` (a :class:`ReconstructionDriftWarning`) or ``"raise"`` (a
            ``RuntimeError``) when the drift exceeds ``drift_tol``.
        checkpoint_every: store ``(z, v)`` every K accepted steps and restart the reconstruction
            from there in the backward pass: drift stays bounded at ``O(N_t / K)`` extra memory.
    """

    name = "mali"
    aliases = ("reversible",)
    drift_tol: float | None = 1e-4
    parasitic_tol: float | None = 0.5
    on_drift: Literal["warn", "raise"] = "warn"
    checkpoint_every: int | None = None

    def __post_init__(self) -> None:
        if self.drift_tol is not None and not (
            self.drift_tol > 0 and math.isfinite(self.drift_tol)
        ):
            raise ValueError(
                f"Mali(drift_tol=...) must be a positive number or None, got {self.drift_tol}"
            )
        if self.parasitic_tol is not None and not (
            self.parasitic_tol > 0 and math.isfinite(self.parasitic_tol)
        ):
            raise ValueError(
                f"Mali(parasitic_tol=...) must be a positive number or None, got {self.parasitic_tol}"
            )
        if self.on_drift not in ("warn", "raise"):
            raise ValueError(f"Mali(on_drift=...) must be 'warn' or 'raise', got {self.on_drift!r}")
        if self.checkpoint_every is not None and (
            int(self.checkpoint_every) != self.checkpoint_every or self.checkpoint_every < 1
        ):
            raise ValueError(
                f"Mali(checkpoint_every=...) must be a positive integer or None, got {self.checkpoint_every!r}"
            )

    def check(self, solver, problem_is_fixed: bool) -> None:
        if not isinstance(solver, ALF):
            raise ValueError(
                f"gradient='mali' needs a reversible solver: use method='alf' (got {solver.name!r}); "
                "for other solvers use gradient='checkpoint' or 'binomial' (also exact)"
            )


class _MaliFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, c: Context, holder: dict, y0: torch.Tensor, *params: torch.Tensor):
        problem, cfg = c.problem, c.method
        checkpoints: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def on_step(i, y, v):
            if cfg.checkpoint_every and i and i % cfg.checkpoint_every == 0:
                checkpoints[i] = (y, v)

        # v0 = f(t0, z0) keeps its graph (one evaluation's activations): the backward pass
        # then needs only its vector-Jacobian product, not a second evaluation. Not with
        # buffers (BatchNorm): the sweep updates them in place, which that graph forbids.
        module = module_of(problem.f.func)
        keep = module is None or next(module.buffers(), None) is None
        with torch.set_grad_enabled(keep):
            z0_in = y0.detach().requires_grad_(keep)
            v0_graph = problem.init(z0_in)
        v0 = v0_graph.detach()
        # Not inference_mode: func may differentiate internally (a CNF's divergence).
        with torch.no_grad():
            outputs, zN, vN, record = integrate(problem, y0, v0, on_step)
        holder["record"] = record
        ctx.c, ctx.record, ctx.checkpoints = c, record, checkpoints
        ctx.final = (zN, vN)
        ctx.v0, ctx.v0_graph = v0, (z0_in, v0_graph) if keep else None
        ctx.save_for_backward(y0, *params)
        kept = [zN, vN, v0, *(t for pair in checkpoints.values() for t in pair)]
        c.stats.memory_bytes = tensor_bytes(kept) + 8 * len(record.ts)
        return torch.stack(outputs)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        c: Context = ctx.c
        refuse_double_backward("mali")
        problem, cfg, record = c.problem, c.method, ctx.record
        f, solver = problem.f, problem.solver
        y0, *params = ctx.saved_tensors
        nfe_start = f.nfe
        eta = solver.eta
        ts, checkpoints = record.ts, ctx.checkpoints
        cot = output_cotangents(grad_out, record.out_steps)
        z, v = ctx.final
        n = record.n_steps
        # η = 1: v_in = 2u − v_out is stored with alternating sign (velocity = sign * v), one
        # kernel per step and still a single rounding.
        undamped, sign = eta == 1.0, 1.0
        a_z = torch.zeros_like(z)
        g_params = [torch.zeros_like(p) for p in params]
        # cu: the cotangent of the step's evaluation u, 2η (a_v + h/2 a_z). Between steps,
        # a_v_in = (1 − 2η) a_v_out' + h/2 a_z, so cu_i = (1 − 2η) cu_{i+1} + η (h_{i+1} + h_i) a_z.
        cu, h_next = None, 0.0
        drift, u_last = 0.0, None
        gaps: list[torch.Tensor] = []  # (numerator, denominator) norms, read with one sync
        with preserve_buffers(f.func):
            for i in range(n - 1, -1, -1):
                if i + 1 in checkpoints:
                    z_ck, v_ck = checkpoints[i + 1]
                    drift = max(drift, *_ratios(_gaps(z, _signed(v, sign), z_ck, v_ck)))
                    z, v, sign = z_ck, v_ck, 1.0
                h = ts[i + 1] - ts[i]
                if cu is None:
                    if i in cot:
                        a_z.add_(cot[i])
                    cu = torch.mul(a_z, eta * h)
                elif i in cot:
                    cu.mul_(1.0 - 2.0 * eta).add_(a_z, alpha=eta * h_next)
                    a_z.add_(cot[i])
                    cu.add_(a_z, alpha=eta * h)
                else:
                    cu.mul_(1.0 - 2.0 * eta).add_(a_z, alpha=eta * (h_next + h))
                k = torch.add(z, v, alpha=-0.5 * h * sign)
                with torch.enable_grad():
                    k_in = k.detach().requires_grad_(True)
                    u = f(ts[i] + 0.5 * h, k_in)
                u_value = u.detach()
                if i == n - 1:
                    u_last = u_value.clone()  # k is updated in place below
                elif i == n - 2:
                    gaps += _parasitic_gap(ctx.final[1], u_last, u_value, ts)
                if undamped:
                    v, sign = torch.add(v, u_value, alpha=-2.0 * sign), -sign
                else:
                    v = solver.reconstruct_velocity(u_value, v)
                k_bar, *p_bar = vjp((u,), (k_in, *params), (cu,))
                add_into(g_params, p_bar)
                a_z.add_(k_bar)
                z = k.add_(v, alpha=-0.5 * h * sign)
                h_next = h
            v = _signed(v, sign)
            gaps += _gaps(z, v, y0, ctx.v0)
            if ctx.v0_graph is None:
                with torch.enable_grad():
                    z0_in = y0.detach().requires_grad_(True)
                    v0_graph = problem.init(z0_in)
            else:
                z0_in, v0_graph = ctx.v0_graph
            # the adjoint of v0: (1 − 2η) a_v_out' + h_0/2 a_z = cu_0 (1 − 2η) / (2η) + h_0/2 a_z
            if cu is None:
                a_v0 = torch.zeros_like(a_z)
            else:
                a_v0 = cu.mul_((1.0 - 2.0 * eta) / (2.0 * eta)).add_(a_z, alpha=0.5 * h_next)
            z_bar, *p_bar = vjp((v0_graph,), (z0_in, *params), (a_v0,), retain_graph=True)
        add_into(g_params, p_bar)
        grad_y0 = a_z.add_(z_bar)
        if -1 in cot:
            grad_y0 = grad_y0.add_(cot[-1])
        c.stats.nfe_backward += f.nfe - nfe_start
        ratios = _ratios(gaps)
        drift = max(drift, *ratios[-2:])
        parasitic = ratios[0] if len(ratios) == 3 else 0.0
        c.stats.drift = drift
        c.stats.parasitic = parasitic
        _check_drift(cfg, drift, parasitic, eta)
        return (None, None, grad_y0, *g_params)


def _signed(v: torch.Tensor, sign: float) -> torch.Tensor:
    return v if sign > 0 else -v


def _parasitic_gap(
    v_n: torch.Tensor, u_n: torch.Tensor, u_prev: torch.Tensor, ts: list[float]
) -> list[torch.Tensor]:
    """Norms of ``v_N − f̂`` and ``f̂``, ``f̂ ≈ f(t_N, z_N)`` extrapolated linearly from the last two
    midpoint evaluations (no extra evaluation; the error of ``f̂`` is ``O(h²)``)."""
    h_n, h_prev = ts[-1] - ts[-2], ts[-2] - ts[-3]
    f_hat = torch.add(u_n, u_n - u_prev, alpha=h_n / (h_n + h_prev))
    return _gap(v_n, f_hat)


def _gap(a: torch.Tensor, ref: torch.Tensor) -> list[torch.Tensor]:
    return [torch.linalg.vector_norm(a - ref), torch.linalg.vector_norm(ref)]


def _gaps(z, v, z_ref, v_ref) -> list[torch.Tensor]:
    """Norms for the relative differences of ``z`` and ``v`` from their references."""
    return _gap(z, z_ref) + _gap(v, v_ref)


def _ratios(gaps: list[torch.Tensor]) -> list[float]:
    """``num / den`` for consecutive pairs of norms, read in one device sync (non-finite: inf)."""
    values = torch.stack(gaps).double().tolist()
    return [
        r if math.isfinite(r := num / (den + 1e-30)) else math.inf
        for num, den in zip(values[::2], values[1::2], strict=True)
    ]


def _check_drift(cfg: Mali, drift: float, parasitic: float, eta: float) -> None:
    # The warning's text is fixed for each cause, so Python shows it once per place instead of
    # once per backward pass of a training run; the measured values are in SolveStats (and in
    # the error raised with on_drift="raise").
    if not math.isfinite(drift):
        # whatever on_drift says: the gradient is NaN/Inf, never worth handing to an optimizer
        raise RuntimeError(
            "MALI's reconstruction of the trajectory overflowed (SolveStats.drift is not finite), "
            "so the gradient is NaN or infinite. ALF's inverse expands round-off where the "
            "dynamics contract: use Mali(checkpoint_every=K), a shorter horizon, float64, or "
            "gradient='checkpoint'"
        )
    if cfg.drift_tol is not None and drift > cfg.drift_tol:
        if eta == 1.0:
            cause = (
                "With eta=1 the inverse step is exact, but it expands round-off wherever the "
                "dynamics contract (SolveStats.parasitic measures the contraction's parasitic "
                "mode): use float64, "
            )
        else:
            cause = (
                f"Damped ALF (eta={eta:g}) amplifies round-off in reverse by "
                f"1/|1-2*eta| = {1 / abs(1 - 2 * eta):.3g} per step: use eta=1, "
            )
        message = (
            f"MALI reconstruction drift exceeds drift_tol={cfg.drift_tol:.3g} "
            "(SolveStats.drift): the reversed ALF trajectory does not match the forward one, so "
            f"the gradient is inaccurate. {cause}a shorter horizon, Mali(checkpoint_every=K), "
            "or gradient='checkpoint'"
        )
    elif cfg.parasitic_tol is not None and parasitic > cfg.parasitic_tol:
        message = (
            "ALF's parasitic mode at the final time exceeds parasitic_tol="
            f"{cfg.parasitic_tol:.3g} times the derivative (SolveStats.parasitic): ALF with "
            "eta=1 is unstable on dissipative dynamics, so the forward solution is far from the "
            "ODE's (MALI's gradient is exact for this discrete solve, not for the ODE). Use a "
            "shorter horizon, a fixed step (adaptive steps shrink without end), damping "
            "(options={'eta': 0.9}) on short horizons, or another solver with "
            "gradient='checkpoint'"
        )
    else:
        return
    if cfg.on_drift == "raise":
        raise RuntimeError(f"{message} (measured: drift {drift:.3g}, parasitic {parasitic:.3g})")
    warnings.warn(message, ReconstructionDriftWarning, stacklevel=3)


Mali.function = _MaliFunction
