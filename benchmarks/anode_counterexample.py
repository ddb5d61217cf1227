"""The ANODE counterexample: the backsolve adjoint is not the gradient of the discrete solve.

For a few right-hand sides and fixed-grid solvers, solve on ``[0, 1]`` with ``N_t`` steps and
compare the backsolve adjoint's gradient (``gradient="adjoint"``, backward solve on the same grid
in reverse) with the exact gradient of the same discrete solve (``gradient="direct"``):

* ``gradient_gap``: ``|g_adjoint − g_direct| / |g_direct|`` over ``(z0, θ)``;
* ``reconstruction_error``: ``|ẑ0 − z0| / |z0|``, where ``ẑ0`` is ``z(T)`` integrated back to
  ``t = 0`` with the same solver and grid (the trajectory the adjoint's backward pass follows).

Usage::

    python benchmarks/anode_counterexample.py            # docs/figures/anode_counterexample.{json,png}
    python benchmarks/anode_counterexample.py --out-dir results/
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn

import torchmali
from torchmali import odeint, solve
from torchmali.gradients.adjoint import Adjoint

DT = torch.float64
STEPS = (1, 2, 4, 16, 64)


class MLP(nn.Module):
    """``dz/dt = W2 act(W1 z + b1) + b2``, weights scaled up to make the dynamics non-trivial."""

    def __init__(self, act: type[nn.Module], dim: int = 2, hidden: int = 32, scale: float = 2.0):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(dim, hidden), act(), nn.Linear(hidden, dim)).to(DT)
        with torch.no_grad():
            for p in self.net.parameters():
                p.mul_(scale)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Blur(nn.Module):
    """A learnable 3-tap periodic convolution initialised to ``ν [1, −2, 1]`` (the heat equation).

    Dissipative: eigenvalues in ``[−4ν, 0]``, so the reverse-time solve is ill-posed.
    """

    def __init__(self, nu: float = 1.0) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.tensor([[[nu, -2 * nu, nu]]], dtype=DT))

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        padded = torch.cat([z[..., -1:], z, z[..., :1]], dim=-1)
        return nn.functional.conv1d(padded, self.kernel)


def _cases() -> dict[str, tuple[nn.Module, torch.Tensor, tuple[str, ...]]]:
    torch.manual_seed(1)
    points = torch.randn(64, 2, dtype=DT)
    x = torch.linspace(0, 1, 33, dtype=DT)[:-1]
    signals = torch.sin(2 * torch.pi * x) + (x > 0.5).to(DT) + 0.3 * torch.randn(8, 32, dtype=DT)
    return {
        "tanh_mlp": (MLP(nn.Tanh), points, ("euler", "rk4", "alf")),
        "relu_mlp": (MLP(nn.ReLU), points, ("euler", "rk4", "alf")),
        "blur": (Blur(), signals.unsqueeze(1), ("euler", "rk4")),
    }


def _gradient(
    func: nn.Module, z0: torch.Tensor, method: str, n: int, gradient: str
) -> tuple[torch.Tensor, int]:
    z = z0.clone().requires_grad_()
    t = torch.tensor([0.0, 1.0], dtype=DT)
    grad = Adjoint() if gradient == "adjoint" else gradient
    sol = solve(func, z, t, method=method, options={"step_size": 1.0 / n}, gradient=grad)
    loss = sol.ys[-1].square().sum()
    gs = torch.autograd.grad(loss, (z, *func.parameters()))
    return torch.cat([g.reshape(-1) for g in gs]), sol.stats.nfe_backward


def _reconstruction_error(func: nn.Module, z0: torch.Tensor, method: str, n: int) -> float:
    opts = {"step_size": 1.0 / n}
    with torch.no_grad():
        z1 = odeint(func, z0, [0.0, 1.0], method=method, options=opts)[-1]
        back = odeint(func, z1, [1.0, 0.0], method=method, options=opts)[-1]
    return float((back - z0).norm() / z0.norm())


def measure(steps: tuple[int, ...] = STEPS) -> dict:
    results: dict = {}
    for case, (func, z0, methods) in _cases().items():
        results[case] = {}
        for method in methods:
            rows = []
            for n in steps:
                g_direct, _ = _gradient(func, z0, method, n, "direct")
                g_adjoint, nfe_backward = _gradient(func, z0, method, n, "adjoint")
                gap = float((g_adjoint - g_direct).norm() / g_direct.norm())
                rows.append(
                    {
                        "n_steps": n,
                        "gradient_gap": gap,
                        "reconstruction_error": _reconstruction_error(func, z0, method, n),
                        "nfe_backward_adjoint": nfe_backward,
                    }
                )
            results[case][method] = rows
    return results


def seminorm_savings() -> list[dict]:
    """Backward evaluations of the adaptive adjoint (dopri5) with the mixed norm and the seminorm."""
    rows = []
    for hidden, tol in ((64, 1e-5), (64, 1e-7), (256, 1e-7)):
        func = MLP(nn.Tanh, dim=4, hidden=hidden, scale=1.0)
        torch.manual_seed(2)
        z0 = torch.randn(16, 4, dtype=DT)
        t = torch.tensor([0.0, 2.0], dtype=DT)
        row = {"hidden": hidden, "n_params": sum(p.numel() for p in func.parameters()), "tol": tol}
        for norm in ("mixed", "seminorm"):
            z = z0.clone().requires_grad_()
            grad = Adjoint(options={"norm": norm})
            sol = solve(func, z, t, rtol=tol, atol=tol, gradient=grad)
            sol.ys[-1].square().sum().backward()
            row[f"nfe_backward_{norm}"] = sol.stats.nfe_backward
        rows.append(row)
    return rows


def table(results: dict) -> str:
    lines = ["| case | solver | " + " | ".join(f"N_t = {n}" for n in STEPS) + " |"]
    lines.append("|---|---|" + "---|" * len(STEPS))
    for case, by_method in results.items():
        for method, rows in by_method.items():
            cells = [f"{r['gradient_gap']:.3g} ({r['reconstruction_error']:.2g})" for r in rows]
            lines.append(f"| {case} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), sharey=True)
    for ax, (case, by_method) in zip(axes, results.items(), strict=True):
        for method, rows in by_method.items():
            n = [r["n_steps"] for r in rows]
            (line,) = ax.loglog(n, [r["gradient_gap"] for r in rows], "o-", label=f"{method} gap")
            ax.loglog(
                n,
                [max(r["reconstruction_error"], 1e-16) for r in rows],
                "x--",
                color=line.get_color(),
                alpha=0.6,
                label=f"{method} reconstruction",
            )
        ax.set_title(case)
        ax.set_xlabel("steps N_t on [0, 1]")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("relative error vs discrete (direct)")
    fig.suptitle("Backsolve adjoint vs the exact gradient of the same discrete solve")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("docs/figures"))
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = measure()
    seminorm = seminorm_savings()
    meta = {
        "torchmali": torchmali.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "dtype": "float64",
        "loss": "sum(z(1)^2)",
        "gradient_gap": "|g_adjoint - g_direct| / |g_direct| over (z0, params)",
        "reconstruction_error": "|z0_reconstructed - z0| / |z0|",
        "seconds": round(time.perf_counter() - start, 1),
    }
    out_json = args.out_dir / "anode_counterexample.json"
    out_json.write_text(
        json.dumps({"meta": meta, "results": results, "seminorm": seminorm}, indent=2) + "\n"
    )
    plot(results, args.out_dir / "anode_counterexample.png")
    print(table(results))
    for row in seminorm:
        print("seminorm:", row)
    print(f"wrote {out_json} and {args.out_dir / 'anode_counterexample.png'}")


if __name__ == "__main__":
    main()
