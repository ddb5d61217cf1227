"""MALI: the reversible backward pass of the asynchronous leapfrog solver."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch

from .._loop import integrate
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

    The forward pass runs under ``no_grad`` and keeps only the final ``(z, v)``, the initial
    ``v0`` and the accepted time points. The backward pass walks the grid in reverse, rebuilds
    every step with ALF's exact algebraic inverse and differentiates it locally — fused: one
    evaluation of ``func`` (with graph) and one vector–Jacobian product per step.

    Gradient: equal to direct backpropagation through the same ALF grid up to reconstruction
    round-off. Memory: ``N_z (N_f + 1)`` plus ``N_t`` floats — constant in the number of steps.
    Cost: about one extra evaluation of ``func`` per step compared with direct backpropagation.
    Requires ``method="alf"`` (fixed or adaptive, any ``eta != 0.5``).

    Reconstruction drift (the relative difference between the reconstructed ``(z0, v0)`` and the
    stored ones) is measured at the end of every backward pass and reported in
    ``SolveStats.drift``. Damped ALF (``eta < 1``) amplifies round-off in the inverse by
    ``1/|1 - 2 eta|`` per step; undamped ALF blows up on dissipative dynamics. Use ``drift_tol``
    to be told, and ``checkpoint_every`` to bound the drift.

    The same check catches ALF's instability on dissipative dynamics (``eta = 1``), where the
    reversal stays exact but the forward solution is swamped by the parasitic mode: the final
    velocity ``v_N`` then disagrees with ``f(t_N, z_N)``; the relative gap is reported in
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

        with torch.no_grad():
            v0 = problem.init(y0)
            outputs, zN, vN, record = integrate(problem, y0, v0, on_step)
        holder["record"] = record
        ctx.c, ctx.record, ctx.checkpoints = c, record, checkpoints
        ctx.final = (zN, vN)
        ctx.v0 = v0
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
        two_eta = 2.0 * solver.eta
        cot = output_cotangents(grad_out, record.out_steps)
        z, v = ctx.final
        a_z = torch.zeros_like(z)
        a_v = torch.zeros_like(v)
        g_params = [torch.zeros_like(p) for p in params]
        drift = 0.0
        with preserve_buffers(f.func):
            with torch.no_grad():
                parasitic = _relative(v, f(record.ts[-1], z))
            for i in range(record.n_steps - 1, -1, -1):
                if i + 1 in ctx.checkpoints:
                    z_ck, v_ck = ctx.checkpoints[i + 1]
                    drift = max(drift, _relative_drift(z, v, z_ck, v_ck))
                    z, v = z_ck, v_ck
                if i in cot:
                    a_z = a_z + cot[i]
                h = record.h(i)
                k = torch.add(z, v, alpha=-0.5 * h)
                with torch.enable_grad():
                    k_in = k.detach().requires_grad_(True)
                    u = f(record.ts[i] + 0.5 * h, k_in)
                v = solver.reconstruct_velocity(u.detach(), v)
                z = torch.add(k, v, alpha=-0.5 * h)
                g = torch.add(a_v, a_z, alpha=0.5 * h)
                k_bar, *p_bar = vjp(u, (k_in, *params), g * two_eta)
                add_into(g_params, p_bar)
                a_z = a_z + k_bar
                a_v = torch.add(g * (1.0 - two_eta), a_z, alpha=0.5 * h)
            drift = max(drift, _relative_drift(z, v, y0, ctx.v0))
            # v0 = f(t0, z0) depends on z0 and the parameters.
            with torch.enable_grad():
                z0_in = y0.detach().requires_grad_(True)
                v0 = problem.init(z0_in)
            z_bar, *p_bar = vjp(v0, (z0_in, *params), a_v)
        add_into(g_params, p_bar)
        grad_y0 = a_z + z_bar
        if -1 in cot:
            grad_y0 = grad_y0 + cot[-1]
        c.stats.nfe_backward += f.nfe - nfe_start
        c.stats.drift = drift
        c.stats.parasitic = parasitic
        _check_drift(cfg, drift, parasitic)
        return (None, None, grad_y0, *g_params)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    d = float(torch.linalg.vector_norm(a - b) / (torch.linalg.vector_norm(b) + 1e-30))
    return d if math.isfinite(d) else math.inf


def _relative_drift(z, v, z_ref, v_ref) -> float:
    return max(_relative(z, z_ref), _relative(v, v_ref))


def _check_drift(cfg: Mali, drift: float, parasitic: float) -> None:
    if cfg.drift_tol is not None and drift > cfg.drift_tol:
        message = (
            f"MALI reconstruction drift exceeds drift_tol={cfg.drift_tol:.3g} (measured value in "
            "SolveStats.drift): the reversed ALF trajectory does not match the forward one, so the gradient is "
            "inaccurate. Damped ALF (eta<1) amplifies round-off in reverse by 1/|1-2*eta| per "
            "step: use eta=1, a shorter horizon, Mali(checkpoint_every=K), or "
            "gradient='checkpoint'"
        )
    elif cfg.parasitic_tol is not None and parasitic > cfg.parasitic_tol:
        message = (
            "ALF's parasitic mode at the final time exceeds parasitic_tol="
            f"{cfg.parasitic_tol:.3g} times the derivative (measured value in "
            "SolveStats.parasitic): ALF with eta=1 is unstable on dissipative "
            "dynamics, so the forward solution (and its exact gradient) is meaningless. Use a "
            "shorter horizon, damping (options={'eta': 0.9}) on short horizons, or another "
            "solver with gradient='checkpoint'"
        )
    else:
        return
    if cfg.on_drift == "raise":
        raise RuntimeError(message)
    warnings.warn(message, ReconstructionDriftWarning, stacklevel=3)


Mali.function = _MaliFunction
