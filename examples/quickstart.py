"""Fit a Neural ODE to a spiral with ALF and MALI's constant-memory exact gradient.

Run: python examples/quickstart.py  (about 7 s on a 2-core CPU; ``--iterations N`` for fewer)
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import torchmali


class Field(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 2))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


def main(iterations: int = 200) -> None:
    torch.manual_seed(0)
    true_A = torch.tensor([[-0.1, -2.0], [2.0, -0.1]])
    t = torch.linspace(0.0, 2.0, 20)
    y0 = torch.tensor([[2.0, 0.0]])
    with torch.no_grad():
        target = torchmali.odeint(lambda t, y: y @ true_A.T, y0, t, method="dopri5")
    func = Field()
    opt = torch.optim.Adam(func.parameters(), lr=1e-2)
    for it in range(iterations + 1):
        sol = torchmali.solve(
            func, y0, t, method="alf", options={"step_size": 0.05}, gradient="mali"
        )
        loss = (sol.ys - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 40 == 0 or it == iterations:
            s = sol.stats
            print(
                f"iter {it:3d}  loss {loss.item():.4f}  steps {s.n_accepted}  "
                f"nfe fwd/bwd {s.nfe_forward}/{s.nfe_backward}  kept {s.memory_bytes} B  "
                f"drift {s.drift:.1e}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--iterations", type=int, default=200, help="optimizer steps (200)")
    main(parser.parse_args().iterations)
