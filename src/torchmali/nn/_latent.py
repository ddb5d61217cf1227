"""Latent ODE (Rubanova, Chen & Duvenaud, 2019) for irregularly sampled time series."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchmali.nn._block import ODEBlock
from torchmali.nn._fields import MLPODEFunc

__all__ = ["LatentODE", "LatentODEOutput"]


@dataclass
class LatentODEOutput:
    """What :meth:`LatentODE.forward` returns.

    Attributes:
        loss: Negative ELBO per observed target value, averaged over the batch.
        nll: Gaussian negative log-likelihood of the targets (summed per series, batch mean).
        kl: KL divergence of ``q(z0 | x)`` from ``N(0, I)`` (per series, batch mean).
        mse: Mean squared error of the predicted mean on the target values.
        pred: Decoded trajectory, ``[B, T, D]``.
    """

    loss: torch.Tensor
    nll: torch.Tensor
    kl: torch.Tensor
    mse: torch.Tensor
    pred: torch.Tensor


class LatentODE(nn.Module):
    """Latent ODE: a recognition network read backwards in time, an ODE decoder, a VAE loss.

    Data come as a shared, increasing time grid ``t`` of ``T`` points (the union of the batch's
    observation times), values ``x`` of shape ``[B, T, D]`` and a 0/1 ``mask`` of the same shape
    saying which values each series observed, so every series may be sampled irregularly.

    The recognition network runs over the observations from the last to the first: a GRU whose
    input also carries the time gap (``encoder="gru"``), or an ODE-RNN (``encoder="odernn"``)
    whose hidden state additionally follows a learned ODE across each gap. It gives
    ``q(z0 | x) = N(mu, sigma^2)``; ``z0`` (at ``t[0]``) is decoded by solving the latent ODE
    at the requested times and mapping each latent state through an MLP. The likelihood is
    Gaussian with a fixed standard deviation ``obs_std``.

    Args:
        obs_dim: Dimension ``D`` of the observations.
        latent_dim: Dimension of ``z``.
        rec_hidden: Hidden size of the recognition GRU.
        ode_hidden: Width of the latent ODE's MLP.
        dec_hidden: Width of the decoder MLP.
        encoder: ``"gru"`` or ``"odernn"``.
        obs_std: Standard deviation of the Gaussian likelihood.
        **ode: Arguments of :class:`ODEBlock` (``method``, ``gradient``, ``rtol``, ``atol``,
            ``options``) for the decoder's (and the ODE-RNN's) solves.

    Raises:
        ValueError: On an unknown encoder or a non-positive ``obs_std``.
    """

    def __init__(
        self,
        obs_dim: int,
        latent_dim: int = 4,
        rec_hidden: int = 32,
        ode_hidden: int = 32,
        dec_hidden: int = 32,
        encoder: str = "gru",
        obs_std: float = 0.1,
        **ode: Any,
    ) -> None:
        super().__init__()
        if encoder not in ("gru", "odernn"):
            raise ValueError(f"encoder must be 'gru' or 'odernn', got {encoder!r}.")
        if obs_std <= 0:
            raise ValueError(f"obs_std must be positive, got {obs_std}.")
        self.obs_dim, self.latent_dim, self.obs_std = obs_dim, latent_dim, obs_std
        self.encoder = encoder
        self.gru = nn.GRUCell(2 * obs_dim + 1, rec_hidden)
        self.to_q = nn.Linear(rec_hidden, 2 * latent_dim)
        self.rec_ode = (
            ODEBlock(MLPODEFunc(rec_hidden, rec_hidden, 1, "tanh"), **ode)
            if encoder == "odernn"
            else None
        )
        self.dynamics = ODEBlock(MLPODEFunc(latent_dim, ode_hidden, 2, "elu"), **ode)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, dec_hidden), nn.ReLU(), nn.Linear(dec_hidden, obs_dim)
        )

    @property
    def ode_blocks(self) -> list[ODEBlock]:
        """The ODE blocks (decoder first)."""
        return [b for b in (self.dynamics, self.rec_ode) if b is not None]

    def encode(
        self, t: torch.Tensor, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters ``(mu, logvar)`` of ``q(z0 | x)`` from the observed values.

        Args:
            t: Time grid ``[T]``, increasing.
            x: Values ``[B, T, D]`` (unobserved entries are ignored).
            mask: Observation mask ``[B, T, D]``.
        """
        b, n, _ = x.shape
        h = x.new_zeros(b, self.gru.hidden_size)
        observed = mask.sum(-1) > 0
        for i in range(n - 1, -1, -1):
            gap = (t[i + 1] - t[i]) if i + 1 < n else t.new_zeros(())
            if self.rec_ode is not None and i + 1 < n:
                span = torch.stack([gap.new_zeros(()), gap]).to(h)
                h = self.rec_ode(h, span)[-1]
            inp = torch.cat([x[:, i] * mask[:, i], mask[:, i], gap.to(x).expand(b, 1)], dim=-1)
            h = torch.where(observed[:, i, None], self.gru(inp, h), h)
        mu, logvar = self.to_q(h).chunk(2, dim=-1)
        return mu, logvar.clamp(-10.0, 5.0)

    def decode(self, z0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Solve the latent ODE from ``z0`` (at ``t[0]``) and decode: ``[B, len(t), D]``."""
        zs = self.dynamics(z0, t.to(z0))
        return self.decoder(zs.transpose(0, 1))

    def forward(
        self,
        t: torch.Tensor,
        x: torch.Tensor,
        mask: torch.Tensor,
        target_mask: torch.Tensor | None = None,
        sample: bool = True,
        kl_weight: float = 1.0,
    ) -> LatentODEOutput:
        """Encode the observed values, decode on all of ``t``, score the targets.

        Args:
            t: Time grid ``[T]``.
            x: Values ``[B, T, D]``.
            mask: Which values the encoder sees, ``[B, T, D]``.
            target_mask: Which values the loss scores; defaults to ``mask``.
            sample: Sample ``z0`` with the reparameterisation trick (training) or use the mean.
            kl_weight: Weight of the KL term (annealing).
        """
        target_mask = mask if target_mask is None else target_mask
        mu, logvar = self.encode(t, x, mask)
        z0 = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        pred = self.decode(z0, t)
        sq = (pred - x) ** 2 * target_mask
        n = target_mask.sum(dim=(1, 2)).clamp_min(1.0)
        const = 0.5 * math.log(2 * math.pi) + math.log(self.obs_std)
        nll = (0.5 * sq / self.obs_std**2 + const * target_mask).sum(dim=(1, 2))
        kl = 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(-1)
        loss = ((nll + kl_weight * kl) / n).mean()
        mse = sq.sum() / target_mask.sum().clamp_min(1.0)
        return LatentODEOutput(loss, nll.mean(), kl.mean(), mse, pred)

    @torch.no_grad()
    def predict(
        self,
        t: torch.Tensor,
        x: torch.Tensor,
        mask: torch.Tensor,
        t_out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean prediction (``z0 = mu``) on ``t_out`` (default ``t``; must start at ``t[0]``).

        Interpolation: ``mask`` hides values inside the observed window; extrapolation: ``t_out``
        extends past the last observation.
        """
        mu, _ = self.encode(t, x, mask)
        return self.decode(mu, t if t_out is None else t_out)
