"""Continuous normalizing flows (FFJORD, Grathwohl et al. 2019) with RNODE regularisers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchmali.nn._block import ODEBlock
from torchmali.nn._fields import MLPODEFunc

__all__ = ["CNF", "CNFDynamics", "CNFOutput"]


@dataclass
class CNFOutput:
    """What :meth:`CNF.forward` returns (per-sample tensors of shape ``[B]`` except ``z``).

    Attributes:
        z: Latent point ``[B, dim]`` after all blocks.
        log_prob: ``log p(x)`` in nats.
        kinetic: RNODE kinetic energy ``int ||f||^2 dt`` summed over blocks (zeros if unused).
        jacobian: RNODE Jacobian-Frobenius estimate ``int ||e^T df/dz||^2 dt`` (zeros if unused).
    """

    z: torch.Tensor
    log_prob: torch.Tensor
    kinetic: torch.Tensor
    jacobian: torch.Tensor


class CNFDynamics(nn.Module):
    """Augmented dynamics ``(z, dlogp[, kinetic, jacobian])`` of one CNF block.

    ``dz/dt = f(t, z)`` and ``d(dlogp)/dt = -tr(df/dz)``; the trace is exact (one
    vector-Jacobian product per dimension) or Hutchinson's estimate ``e^T (df/dz) e`` with the
    noise ``e`` held fixed for a whole solve (set :attr:`noise` before solving), so every
    evaluation of a solve, including those of a checkpointed or reversible backward pass, sees
    the same function.

    Args:
        net: The vector field ``f(t, z)``.
        regularise: Also integrate the kinetic energy and the Jacobian-Frobenius term.
    """

    def __init__(self, net: nn.Module, regularise: bool = False) -> None:
        super().__init__()
        self.net = net
        self.regularise = regularise
        self.exact = True
        self.noise: torch.Tensor | None = None

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        z = state[0]
        outer_grad = torch.is_grad_enabled()
        with torch.enable_grad():
            zg = z if z.requires_grad else z.detach().requires_grad_(True)
            dz = self.net(t, zg)
            need_vjp = not self.exact or self.regularise
            if need_vjp and self.noise is None:
                raise ValueError(
                    "CNFDynamics.noise is unset; call CNF.forward / CNF.log_prob, "
                    "which sample it, instead of solving the dynamics directly."
                )
            e_jac = None
            if need_vjp:
                e_jac = torch.autograd.grad(
                    dz, zg, self.noise, create_graph=outer_grad, retain_graph=True
                )[0]
            if self.exact:
                cols = [
                    torch.autograd.grad(
                        dz[:, i].sum(), zg, create_graph=outer_grad, retain_graph=True
                    )[0][:, i]
                    for i in range(z.shape[1])
                ]
                trace = torch.stack(cols, dim=1).sum(1)
            else:
                trace = (e_jac * self.noise).sum(1)
        out = [dz, -trace[:, None]]
        if self.regularise:
            out += [(dz**2).sum(1, keepdim=True), (e_jac**2).sum(1, keepdim=True)]
        if not outer_grad:
            out = [o.detach() for o in out]
        return tuple(out)


class CNF(nn.Module):
    """FFJORD continuous normalizing flow: stacked blocks, log-likelihood and sampling.

    Each block integrates :class:`CNFDynamics` over ``[0, t1]`` from data towards a standard
    normal base distribution; ``log p(x) = log N(z(t1)) - dlogp(t1)`` summed over blocks.

    Args:
        dim: Data dimension.
        hidden: Width of each block's MLP.
        layers: Hidden layers of each block's MLP.
        blocks: Number of stacked CNF blocks.
        t1: Integration time of each block.
        activation: Activation of the MLPs (smooth: ``"softplus"`` or ``"tanh"``).
        trace: ``"hutchinson"`` (stochastic, one VJP) or ``"exact"`` for training.
        noise: Hutchinson noise, ``"rademacher"`` or ``"gaussian"``.
        exact_eval_max_dim: In evaluation mode (``model.eval()``) the exact trace is used when
            ``dim`` is at most this.
        kinetic: RNODE kinetic-energy weight (only integrated when either weight is non-zero).
        jacobian: RNODE Jacobian-Frobenius weight.
        **ode: Arguments of :class:`ODEBlock` (``method``, ``gradient``, ``rtol``, ...).

    Raises:
        ValueError: On an unknown ``trace`` or ``noise``, or negative regulariser weights.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 64,
        layers: int = 2,
        blocks: int = 1,
        t1: float = 1.0,
        activation: str = "softplus",
        trace: str = "hutchinson",
        noise: str = "rademacher",
        exact_eval_max_dim: int = 16,
        kinetic: float = 0.0,
        jacobian: float = 0.0,
        **ode: Any,
    ) -> None:
        super().__init__()
        if trace not in ("hutchinson", "exact"):
            raise ValueError(f"trace must be 'hutchinson' or 'exact', got {trace!r}.")
        if noise not in ("rademacher", "gaussian"):
            raise ValueError(f"noise must be 'rademacher' or 'gaussian', got {noise!r}.")
        if kinetic < 0 or jacobian < 0:
            raise ValueError(
                f"regulariser weights must be >= 0, got kinetic={kinetic}, jacobian={jacobian}."
            )
        self.dim, self.trace, self.noise_kind = dim, trace, noise
        self.exact_eval_max_dim = exact_eval_max_dim
        self.kinetic, self.jacobian = kinetic, jacobian
        regularise = kinetic > 0 or jacobian > 0
        self.blocks = nn.ModuleList(
            ODEBlock(
                CNFDynamics(MLPODEFunc(dim, hidden, layers, activation), regularise),
                t=(0.0, t1),
                **ode,
            )
            for _ in range(blocks)
        )

    @property
    def ode_blocks(self) -> list[ODEBlock]:
        """The ODE blocks, in order."""
        return list(self.blocks)

    def _sample_noise(self, like: torch.Tensor) -> torch.Tensor:
        if self.noise_kind == "gaussian":
            return torch.randn_like(like)
        return torch.randint_like(like, 0, 2) * 2 - 1

    def _use_exact(self, exact: bool | None) -> bool:
        if exact is not None:
            return exact
        if self.training:
            return self.trace == "exact"
        return self.dim <= self.exact_eval_max_dim or self.trace == "exact"

    def forward(self, x: torch.Tensor, exact: bool | None = None) -> CNFOutput:
        """Map data ``x`` (``[B, dim]``) to the base distribution and score it.

        Args:
            x: Data points.
            exact: Force the exact trace (``True``) or Hutchinson's (``False``); ``None`` picks
                by mode (see the class docstring).
        """
        z = x
        delta = x.new_zeros(x.shape[0], 1)
        kin = x.new_zeros(x.shape[0], 1)
        jac = x.new_zeros(x.shape[0], 1)
        use_exact = self._use_exact(exact)
        for block in self.blocks:
            dyn: CNFDynamics = block.func
            dyn.exact = use_exact
            dyn.noise = self._sample_noise(x)
            state = (z, torch.zeros_like(delta))
            if dyn.regularise:
                state += (torch.zeros_like(kin), torch.zeros_like(jac))
            out = block(state)
            z, delta = out[0], delta + out[1]
            if dyn.regularise:
                kin, jac = kin + out[2], jac + out[3]
        log_pz = -0.5 * (z**2).sum(1) - 0.5 * self.dim * math.log(2 * math.pi)
        return CNFOutput(z, log_pz - delta[:, 0], kin[:, 0], jac[:, 0])

    def log_prob(self, x: torch.Tensor, exact: bool | None = None) -> torch.Tensor:
        """``log p(x)`` in nats, ``[B]``."""
        return self(x, exact).log_prob

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Training loss: mean negative log-likelihood plus the weighted RNODE terms."""
        out = self(x)
        loss = -out.log_prob.mean()
        if self.kinetic > 0:
            loss = loss + self.kinetic * out.kinetic.mean()
        if self.jacobian > 0:
            loss = loss + self.jacobian * out.jacobian.mean()
        return loss

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` samples by integrating base-distribution draws backwards through the blocks.

        The reverse solve uses the time change ``s = t1 - t``, so only increasing time is needed.
        """
        ref = next(self.parameters())
        z = torch.randn(n, self.dim, generator=generator, dtype=ref.dtype).to(ref.device)
        for block in reversed(self.blocks):
            net = block.func.net
            t1 = block.t[-1]

            def reverse(
                s: torch.Tensor, y: torch.Tensor, net: nn.Module = net, t1: float = t1
            ) -> torch.Tensor:
                return -net(t1 - s, y)

            rev = ODEBlock(
                reverse,
                t=(0.0, t1),
                method=block.method,
                gradient="direct",
                rtol=block.rtol,
                atol=block.atol,
                options=block.options,
            )
            z = rev(z)
        return z
