"""The benchmark's workloads: a Neural ODE, its initial state, output times and loss.

Every workload is built deterministically from a seed, in any dtype and on any device, so that the
same vector field (same weights) is run by every library, and a float64 copy gives the reference
gradients. The vector fields are plain ``nn.Module``\\ s with ``forward(t, y)``, the one calling
convention all three libraries accept; ``t`` may be a Python float or a 0-dim tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["WORKLOADS", "Problem", "Workload", "build_problem", "gradient_vector"]

#: Integration interval of every workload.
T0, T1 = 0.0, 1.0


class MLPField(nn.Module):
    """``f(t, z) = W2 tanh(W1 [z, t] + b1) + b2``: the MLP vector field of a Neural ODE.

    Args:
        dim: state dimension.
        hidden: hidden width.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim + 1, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, t: float | torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        tt = z.new_ones(z.shape[:-1] + (1,)) * t
        return self.fc2(torch.tanh(self.fc1(torch.cat([z, tt], dim=-1))))


class ConcatConv2d(nn.Module):
    """A 3x3 convolution that sees the time as one more input channel (as in ODE-Net)."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels_in + 1, channels_out, 3, padding=1)

    def forward(self, t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = x.new_ones(x.shape[:1] + (1,) + x.shape[2:]) * t
        return self.conv(torch.cat([x, tt], dim=1))


class ConvField(nn.Module):
    """``f(t, x) = conv2(t, tanh(conv1(t, x)))``: the vector field of an ODE block in an image
    classifier (ODE-Net / MALI's image experiments, without normalisation layers so that the
    continuous-time gradient is well defined).

    Args:
        channels: feature channels of the state.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConcatConv2d(channels, channels)
        self.conv2 = ConcatConv2d(channels, channels)

    def forward(self, t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(t, torch.tanh(self.conv1(t, x)))


@dataclass(frozen=True)
class Workload:
    """A benchmark problem.

    Attributes:
        name: the ``--workloads`` name.
        description: one line for the report.
        make_field: builds the vector field (an ``nn.Module``) with default initialisation.
        state_shape: shape of the initial state (batch first).
        n_outputs: number of output times after ``t0`` the loss reads (1 = the final state only).
    """

    name: str
    description: str
    make_field: Callable[[], nn.Module]
    state_shape: tuple[int, ...]
    n_outputs: int = 1

    def output_times(self) -> list[float]:
        """The output times ``t0 < t1 < ... = T1`` (equally spaced; every grid of the sweep lands
        on them because the step counts are multiples of ``n_outputs``)."""
        n = self.n_outputs
        return [T0 + (T1 - T0) * i / n for i in range(n + 1)]


_MLP = dict(dim=64, hidden=64, batch=512)
_CONV = dict(channels=16, size=8, batch=16)

WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "mlp",
            f"MLP field {_MLP['dim']}-{_MLP['hidden']}-{_MLP['dim']} (tanh), batch "
            f"{_MLP['batch']}, loss on the final state",
            lambda: MLPField(_MLP["dim"], _MLP["hidden"]),
            (_MLP["batch"], _MLP["dim"]),
        ),
        Workload(
            "mlp-times",
            "the mlp workload with the loss on 5 output times t = 0.2, 0.4, ..., 1",
            lambda: MLPField(_MLP["dim"], _MLP["hidden"]),
            (_MLP["batch"], _MLP["dim"]),
            n_outputs=5,
        ),
        Workload(
            "conv",
            f"conv field (two 3x3 ConcatConv2d, {_CONV['channels']} channels, tanh) on "
            f"{_CONV['batch']}x{_CONV['channels']}x{_CONV['size']}x{_CONV['size']} feature "
            "maps, loss on the final state",
            lambda: ConvField(_CONV["channels"]),
            (_CONV["batch"], _CONV["channels"], _CONV["size"], _CONV["size"]),
        ),
        Workload(
            "conv-times",
            "the conv workload with the loss on 5 output times t = 0.2, 0.4, ..., 1",
            lambda: ConvField(_CONV["channels"]),
            (_CONV["batch"], _CONV["channels"], _CONV["size"], _CONV["size"]),
            n_outputs=5,
        ),
    )
}


@dataclass
class Problem:
    """One instantiated workload.

    Attributes:
        func: the vector field.
        y0: the initial state (a leaf that requires grad).
        t: the output times (1-D tensor in the state's dtype).
        weights: the loss weights, one tensor per output time after ``t0``.
    """

    func: nn.Module
    y0: torch.Tensor
    t: torch.Tensor
    weights: torch.Tensor

    def loss(self, ys: torch.Tensor) -> torch.Tensor:
        """``L = sum_k <w_k, y(t_k)> / numel(y0)`` over the output times after ``t0``.

        Args:
            ys: the states at every output time (``t0`` included) or, for a final-state workload,
                just the final state.
        """
        if ys.dim() == self.y0.dim():
            ys = ys.unsqueeze(0)
        ys = ys[-self.weights.shape[0] :]
        return (ys * self.weights).sum() / self.y0.numel()

    def subset(self, batch: int) -> Problem:
        """The same problem on the first ``batch`` samples (same vector field)."""
        y0 = self.y0.detach()[:batch].clone().requires_grad_(True)
        return Problem(self.func, y0, self.t, self.weights[:, :batch])

    def parameters(self) -> list[torch.Tensor]:
        """Everything the gradient is taken with respect to: the field's parameters, then ``y0``."""
        return [*self.func.parameters(), self.y0]


def build_problem(
    workload: Workload, dtype: torch.dtype, device: torch.device | str, seed: int = 0
) -> Problem:
    """Instantiate ``workload``: the same weights and data for a given seed in any dtype.

    Args:
        workload: the workload.
        dtype: the state's and parameters' dtype.
        device: where to put everything.
        seed: seeds the weights, the initial state and the loss weights.

    Returns:
        The problem.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        func = workload.make_field()
    func = func.to(device=device, dtype=dtype)
    # Generated in float32 (the default dtype of the weights too), so that a float64 instance is
    # the exact upcast of the float32 one: the reference gradients solve the very same problem.
    y0 = torch.randn(workload.state_shape, generator=gen)
    weights = torch.randn((workload.n_outputs, *workload.state_shape), generator=gen)
    t = torch.tensor(workload.output_times(), dtype=dtype, device=device)
    return Problem(
        func=func,
        y0=y0.to(device=device, dtype=dtype).requires_grad_(True),
        t=t,
        weights=weights.to(device=device, dtype=dtype),
    )


def gradient_vector(problem: Problem) -> torch.Tensor:
    """All gradients of :meth:`Problem.parameters` as one float64 CPU vector (zeros for ``None``)."""
    parts = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
        for p in problem.parameters()
    ]
    return torch.cat(parts).to(device="cpu", dtype=torch.float64)
