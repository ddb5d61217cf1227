"""The benchmark's workloads: a Neural ODE, its initial state, output times and loss.

Every workload is built deterministically from a seed, in any dtype and on any device, so that the
same vector field (same weights) is run by every library, and a float64 copy gives the reference
gradients. The vector fields are plain ``nn.Module``\\ s with ``forward(t, y)``, the one calling
convention all three libraries accept; ``t`` may be a Python float or a 0-dim tensor.

Two long-horizon workloads (``t in [0, 10]``) share one linear field with a different spectrum:
``decay`` is dissipative (it contracts to its equilibrium): ALF, the solver of MALI, is unstable
there (its parasitic mode grows), while explicit Runge–Kutta solvers are not; ``oscillate``
rotates (imaginary eigenvalues), where ALF is stable. Their exact solution and gradient are known
in closed form (a matrix exponential), so their continuous-time reference needs no ODE solve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["WORKLOADS", "Problem", "Workload", "build_problem", "gradient_vector"]

#: Start of every workload's interval, and the end of all but the dissipative one.
T0, T1 = 0.0, 1.0
#: End of the long-horizon workloads' interval (``decay``: ``e^(-T)`` of the transient is left).
T_LONG = 10.0


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


class AffineField(nn.Module):
    """``f(t, z) = A z + b``: a linear Neural ODE whose exact flow is known (:meth:`flow`).

    With ``kind="decay"``, ``A = -I + 0.3 G / sqrt(d)`` (``G`` standard normal): every eigenvalue
    of ``A`` has real part in about ``[-1.3, -0.7]`` (seed 0: -1.30 to -0.69, imaginary parts up to
    0.32), so solutions contract to the equilibrium ``-A^-1 b`` (dissipative dynamics). With
    ``kind="rotation"``, ``A = (G - G^T) / sqrt(2 d)`` is skew-symmetric: its eigenvalues are
    imaginary (``|λ| < 2``), solutions oscillate and keep their distance to the equilibrium
    (oscillatory dynamics, where ALF is stable).

    Args:
        dim: state dimension.
        kind: ``"decay"`` or ``"rotation"``.
    """

    def __init__(self, dim: int, kind: str = "decay") -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        g = torch.randn(dim, dim)
        if kind == "decay":
            a = -torch.eye(dim) + 0.3 * g / dim**0.5
        elif kind == "rotation":
            a = (g - g.T) / (2 * dim) ** 0.5
        else:
            raise ValueError(f"kind must be 'decay' or 'rotation', got {kind!r}")
        with torch.no_grad():
            self.linear.weight.copy_(a)

    def forward(self, t: float | torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z)

    def flow(self, z0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The exact solution at the times ``t`` (from ``t[0]``), differentiable with respect to
        the parameters and ``z0``: ``[z(t); 1] = exp(M (t - t0)) [z0; 1]`` with
        ``M = [[A, b], [0, 0]]``."""
        a, b = self.linear.weight, self.linear.bias
        dim = a.shape[0]
        m = torch.cat([torch.cat([a, b[:, None]], 1), a.new_zeros(1, dim + 1)], 0)
        outs = []
        for tk in t:
            e = torch.linalg.matrix_exp(m * (tk - t[0]))
            outs.append(z0 @ e[:dim, :dim].T + e[:dim, dim])
        return torch.stack(outs)


@dataclass(frozen=True)
class Workload:
    """A benchmark problem.

    Attributes:
        name: the ``--workloads`` name.
        description: one line for the report.
        make_field: builds the vector field (an ``nn.Module``) with default initialisation.
        state_shape: shape of the initial state (batch first).
        n_outputs: number of output times after ``t0`` the loss reads (1 = the final state only).
        t1: the end of the interval ``[T0, t1]``.
        dissipative: the dynamics contract (ALF is unstable on them): judged by their own targets.
    """

    name: str
    description: str
    make_field: Callable[[], nn.Module]
    state_shape: tuple[int, ...]
    n_outputs: int = 1
    t1: float = T1
    dissipative: bool = False

    def output_times(self) -> list[float]:
        """The output times ``t0 < t1 < ... = self.t1`` (equally spaced; every grid of the sweep
        lands on them because the step counts are multiples of ``n_outputs``)."""
        n = self.n_outputs
        return [T0 + (self.t1 - T0) * i / n for i in range(n + 1)]

    def step_size(self, n_steps: int) -> float:
        """The step of a fixed grid of ``n_steps`` steps over the interval."""
        return (self.t1 - T0) / n_steps


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
        Workload(
            "decay",
            f"dissipative affine field A z + b ({_MLP['dim']}-dim, eigenvalues of A with real "
            f"part < 0), batch {_MLP['batch']}, t in [0, {T_LONG:g}], loss on the final state",
            lambda: AffineField(_MLP["dim"]),
            (_MLP["batch"], _MLP["dim"]),
            t1=T_LONG,
            dissipative=True,
        ),
        Workload(
            "oscillate",
            f"oscillatory affine field A z + b ({_MLP['dim']}-dim, A skew-symmetric: imaginary "
            f"eigenvalues), batch {_MLP['batch']}, t in [0, {T_LONG:g}], loss on the final state",
            lambda: AffineField(_MLP["dim"], "rotation"),
            (_MLP["batch"], _MLP["dim"]),
            t1=T_LONG,
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
        return (self.outputs(ys) * self.weights).sum() / self.y0.numel()

    def subset(self, batch: int) -> Problem:
        """The same problem on the first ``batch`` samples (same vector field)."""
        y0 = self.y0.detach()[:batch].clone().requires_grad_(True)
        return Problem(self.func, y0, self.t, self.weights[:, :batch])

    def outputs(self, ys: torch.Tensor) -> torch.Tensor:
        """The states the loss reads (those at the output times after ``t0``), stacked."""
        if ys.dim() == self.y0.dim():
            ys = ys.unsqueeze(0)
        return ys[-self.weights.shape[0] :]

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
