"""Ready vector fields: a time-conditioned convolutional one and an MLP one."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ConvODEFunc", "MLPODEFunc", "group_norm"]

_ACTIVATIONS = {"tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU, "relu": nn.ReLU}


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest number of groups ``<= max_groups`` that divides ``channels``."""
    return nn.GroupNorm(math.gcd(channels, max_groups), channels)


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}."
        ) from None


class _ConcatConv2d(nn.Module):
    """A 3x3 convolution whose input gets the time ``t`` appended as a constant channel."""

    def __init__(self, cin: int, cout: int, time_dependent: bool) -> None:
        super().__init__()
        self.time_dependent = time_dependent
        self.conv = nn.Conv2d(cin + int(time_dependent), cout, 3, padding=1)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.time_dependent:
            tt = torch.ones_like(x[:, :1]) * t.to(x.dtype)
            x = torch.cat([x, tt], dim=1)
        return self.conv(x)


class ConvODEFunc(nn.Module):
    """Convolutional vector field ``conv -> norm -> ReLU -> conv -> norm`` (as in the papers).

    Each convolution sees the time ``t`` as an extra input channel, so the field is
    non-autonomous. Normalisation is GroupNorm, which has no running statistics: the forward
    pass, the recomputation of checkpointing and MALI's reconstruction all see the same function.

    Args:
        channels: Number of input (and output) channels.
        time_dependent: Append ``t`` as an input channel of both convolutions.
        norm: ``"group"`` (GroupNorm) or ``"none"``.

    Raises:
        ValueError: On an unknown ``norm``.
    """

    def __init__(self, channels: int, time_dependent: bool = True, norm: str = "group") -> None:
        super().__init__()
        if norm not in ("group", "none"):
            raise ValueError(f"norm must be 'group' or 'none', got {norm!r}.")

        def make_norm() -> nn.Module:
            return group_norm(channels) if norm == "group" else nn.Identity()

        self.conv1 = _ConcatConv2d(channels, channels, time_dependent)
        self.norm1 = make_norm()
        self.conv2 = _ConcatConv2d(channels, channels, time_dependent)
        self.norm2 = make_norm()

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Evaluate the field at time ``t`` and state ``x`` of shape ``[B, C, H, W]``."""
        h = torch.relu(self.norm1(self.conv1(t, x)))
        return self.norm2(self.conv2(t, h))


class MLPODEFunc(nn.Module):
    """MLP vector field ``R^dim -> R^dim``; ``t`` is appended to the input of every layer.

    Args:
        dim: State dimension (the last dimension of the state).
        hidden: Width of the hidden layers.
        layers: Number of hidden layers.
        activation: ``"tanh"``, ``"softplus"``, ``"elu"`` or ``"relu"``. Smooth activations are
            preferable for adaptive solvers and for CNFs, whose divergence needs second
            derivatives.
        time_dependent: Append ``t`` to each layer's input.

    Raises:
        ValueError: On an unknown activation or ``layers < 1``.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 64,
        layers: int = 2,
        activation: str = "tanh",
        time_dependent: bool = True,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}.")
        self.time_dependent = time_dependent
        extra = int(time_dependent)
        sizes = [dim] + [hidden] * layers + [dim]
        self.linears = nn.ModuleList(
            nn.Linear(a + extra, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.acts = nn.ModuleList(_activation(activation) for _ in range(layers))

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Evaluate the field at time ``t`` and state ``x`` of shape ``[..., dim]``."""
        tt = torch.ones_like(x[..., :1]) * t.to(x.dtype) if self.time_dependent else None
        h = x
        for i, lin in enumerate(self.linears):
            if tt is not None:
                h = torch.cat([h, tt], dim=-1)
            h = lin(h)
            if i < len(self.acts):
                h = self.acts[i](h)
        return h
