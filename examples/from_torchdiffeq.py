"""Coming from torchdiffeq: the calls of a torchdiffeq notebook, unchanged, then ``gradient=``.

Run: python examples/from_torchdiffeq.py  (a few seconds on a CPU)

1. ``import torchmali as torchdiffeq`` and the usual calls: a lambda on a scalar state with
   ``method="rk4"`` (the grid is ``t``), a tuple state with dopri5, ``odeint_adjoint``.
   When torchdiffeq is installed the same calls are run through it and the answers compared.
2. A bouncing ball with ``odeint_event``: the bounce time and its gradient with respect to the
   initial height, against the closed form.
3. The same fit as direct backprop with a memory-efficient exact gradient: ``gradient=
   "checkpoint"`` / ``"symplectic"`` with a lambda, which needs ``params=`` (without it the solve
   refuses rather than leaving the network's parameters without a gradient).
"""

from __future__ import annotations

import math

import torch
from torch import nn

import torchmali as torchdiffeq  # the one-line change

try:
    import torchdiffeq as original  # only to compare; not needed by torchmali
except ImportError:
    original = None

torch.set_default_dtype(torch.float64)


def compare(name: str, ours: torch.Tensor, call) -> None:
    line = f"{name:<44s} {float(ours.reshape(-1)[-1]):+.10f}"
    if original is not None:
        theirs = call(original)
        line += f"   torchdiffeq {float(theirs.reshape(-1)[-1]):+.10f}"
        line += f"   |diff| {float((ours - theirs).abs().max()):.1e}"
    print(line)


def notebook_calls() -> None:
    t = torch.linspace(0.0, 2.0, 21)
    y0 = torch.tensor(1.0)  # a 0-dim state
    decay = lambda t, y: -y + torch.sin(t)  # noqa: E731 - the notebook style this example is about

    ys = torchdiffeq.odeint(decay, y0, t, method="rk4")
    compare("scalar state, rk4 on the grid t", ys, lambda m: m.odeint(decay, y0, t, method="rk4"))

    def pendulum(t, state):
        theta, omega = state
        return omega, -torch.sin(theta) - 0.1 * omega

    state0 = (torch.tensor([1.0]), torch.tensor([0.0]))
    theta, _ = torchdiffeq.odeint(pendulum, state0, t, rtol=1e-8, atol=1e-10)
    compare(
        "tuple state, dopri5 (agrees to the tolerance)",
        theta,
        lambda m: m.odeint(pendulum, state0, t, rtol=1e-8, atol=1e-10)[0],
    )

    net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))

    class Field(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, t, y):
            return self.net(y)

    func, x0 = Field(), torch.tensor([[0.5, -0.5]])
    for module in (torchdiffeq,) + ((original,) if original is not None else ()):
        func.zero_grad()
        module.odeint_adjoint(func, x0, t, method="rk4").pow(2).sum().backward()
        grad = net[0].weight.grad.clone()
        print(
            f"odeint_adjoint, rk4 ({module.__name__:<11s}) dL/dW[0,0] = {float(grad[0, 0]):+.10f}"
        )


def bouncing_ball() -> None:
    g = 9.81

    def fall(t, state):
        x, v = state
        return v, torch.full_like(v, -g)

    x0 = torch.tensor(2.0, requires_grad=True)
    v0 = torch.tensor(0.0)
    event_t, (xs, vs) = torchdiffeq.odeint_event(
        fall, (x0, v0), torch.tensor(0.0), event_fn=lambda t, s: s[0], rtol=1e-10, atol=1e-12
    )
    (dt_dx0,) = torch.autograd.grad(event_t, x0)
    event_t = event_t.detach()
    exact_t, exact_grad = math.sqrt(2 * 2.0 / g), 1.0 / math.sqrt(2 * g * 2.0)
    print(
        f"bounce at t = {float(event_t):.10f} (exact {exact_t:.10f}), "
        f"d t / d x0 = {float(dt_dx0):.10f} (exact {exact_grad:.10f}), "
        f"speed {float(-vs[-1].detach()):.6f}"
    )


def memory_efficient_gradients() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 2))
    f = lambda t, y: net(y)  # noqa: E731
    y0, t = torch.randn(8, 2), torch.linspace(0.0, 1.0, 5)

    def grads(**kwargs) -> torch.Tensor:
        net.zero_grad()
        sol = torchdiffeq.solve(f, y0, t, method="dopri5", rtol=1e-6, atol=1e-8, **kwargs)
        sol.ys.pow(2).mean().backward()
        return torch.cat([p.grad.reshape(-1) for p in net.parameters()]), sol.stats

    reference, stats = grads()
    print(f"direct backprop: {stats.n_accepted} dopri5 steps, graph of every step kept")
    try:
        grads(gradient="checkpoint")
    except ValueError as err:
        print(f"gradient='checkpoint' without params= is refused:\n  {str(err).split('; ')[0]}")
    for gradient in ("checkpoint", "symplectic"):
        got, stats = grads(gradient=gradient, params=list(net.parameters()))
        error = float((got - reference).norm() / reference.norm())
        print(
            f"gradient={gradient!r:<13s} params=net.parameters(): relative difference from "
            f"direct {error:.1e}, kept {stats.memory_bytes} bytes"
        )


if __name__ == "__main__":
    notebook_calls()
    bouncing_ball()
    memory_efficient_gradients()
