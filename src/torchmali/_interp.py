"""torchdiffeq's interpolation between the points of a fixed grid (``options["interp"]``).

The formulas and their operation order are torchdiffeq's (``FixedGridODESolver._linear_interp``
and ``_cubic_hermite_interp``), so a fixed-grid solve gives torchdiffeq's numbers to round-off.
"""

from __future__ import annotations

import torch


def linear(t0: float, h: float, y0: torch.Tensor, y1: torch.Tensor, t: float) -> torch.Tensor:
    """``y0 + (t - t0) / h * (y1 - y0)``; ``y0`` itself at ``t0``."""
    if t == t0:
        return y0
    return y0 + (t - t0) / h * (y1 - y0)


def cubic_hermite(
    t0: float,
    h: float,
    y0: torch.Tensor,
    f0: torch.Tensor,
    y1: torch.Tensor,
    f1: torch.Tensor,
    t: float,
) -> torch.Tensor:
    """The cubic through ``(t0, y0)`` and ``(t0 + h, y1)`` with slopes ``f0`` and ``f1``."""
    s = (t - t0) / h
    h00 = (1 + 2 * s) * (1 - s) * (1 - s)
    h10 = s * (1 - s) * (1 - s)
    h01 = s * s * (3 - 2 * s)
    h11 = s * s * (s - 1)
    return h00 * y0 + h10 * h * f0 + h01 * y1 + h11 * h * f1
