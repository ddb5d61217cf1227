"""Per-solve overhead of torchmali against torchdiffeq (and TorchDiffEqPack's ALF when installed).

A small tanh MLP vector field (batch 64, dim 2) is integrated over ``t = [0, 1]`` with a few output
times. For every case the script measures the wall time of one solve, forward only (under
``torch.no_grad()``) and forward + backward (direct backpropagation), and counts the evaluations
of the vector field. The cases are timed round-robin (one call of each case per round) so that
drifting machine load affects them alike; the median over the rounds is reported.

Cases:

* ``dopri5`` adaptive, torchmali vs torchdiffeq: the headline ratio.
* ``rk4`` on a fixed grid of 50 steps (200 evaluations in both libraries): the per-step overhead
  of the integration loop with the step-size controller out of the picture.
* ``alf`` adaptive, torchmali vs TorchDiffEqPack's ``sym12async`` (the original MALI code, same
  method) when installed; torchdiffeq has no ALF, so its dopri5 is the other reference. ALF is a
  second-order method and needs many more steps than dopri5 at the same tolerance.

Usage::

    python benchmarks/solver_overhead.py                       # writes results/solver_overhead.json
    python benchmarks/solver_overhead.py --repeats 50 --figure docs/figures/solver_overhead.png
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import torchmali


class Field(nn.Module):
    """``dy/dt = MLP(y)`` with tanh activations; counts its evaluations.

    With ``hidden = 0`` the field is linear, ``y W`` with ``W`` skew-symmetric (a rotation, one
    tiny matmul): the timings are then almost all integration-loop overhead.
    """

    def __init__(self, dim: int, hidden: int, gain: float, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        if hidden == 0:
            self.net = nn.Linear(dim, dim, bias=False)
            with torch.no_grad():
                w = torch.randn(dim, dim)
                self.net.weight.copy_(w - w.T)
        else:
            self.net = nn.Sequential(
                nn.Linear(dim, hidden),
                nn.Tanh(),
                nn.Linear(hidden, hidden),
                nn.Tanh(),
                nn.Linear(hidden, dim),
            )
        with torch.no_grad():
            for p in self.net.parameters():
                p.mul_(gain)
        self.calls = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(y)


def _cases(field: Field, y0: torch.Tensor, t: torch.Tensor, args) -> dict[str, Callable]:
    """name -> solve(), returning the solution at the output times."""
    tol = {"rtol": args.rtol, "atol": args.atol}
    rk4 = {"method": "rk4", "options": {"step_size": (float(t[-1]) - float(t[0])) / args.rk4_steps}}
    cases: dict[str, Callable] = {
        "torchmali dopri5": lambda: torchmali.odeint(field, y0, t, method="dopri5", **tol),
        "torchmali rk4": lambda: torchmali.odeint(field, y0, t, **rk4),
        "torchmali alf": lambda: torchmali.odeint(field, y0, t, method="alf", **tol),
    }
    try:
        import torchdiffeq
    except ImportError:
        print("torchdiffeq is not installed: no reference timings")
    else:
        cases["torchdiffeq dopri5"] = lambda: torchdiffeq.odeint(
            field, y0, t, method="dopri5", **tol
        )
        cases["torchdiffeq rk4"] = lambda: torchdiffeq.odeint(field, y0, t, **rk4)
    try:
        from TorchDiffEqPack import odesolve
    except ImportError:
        pass
    else:
        options = {
            "method": "sym12async",
            "t0": float(t[0]),
            "t1": float(t[-1]),
            "t_eval": [float(s) for s in t[1:]],
            "h": None,
            "print_neval": False,
            "neval_max": 10**6,
            "safety": None,
            **tol,
        }
        cases["TorchDiffEqPack alf"] = lambda: odesolve(field, y0, options)
    return cases


def _loss(out) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        return sum(o.square().sum() for o in out)
    return out.square().sum()


def measure(args) -> dict:
    torch.set_num_threads(args.threads)
    field = Field(args.dim, args.hidden, args.gain, args.seed)
    y0 = torch.randn(args.batch, args.dim, generator=torch.Generator().manual_seed(args.seed + 1))
    t = torch.linspace(0.0, 1.0, args.outputs)
    cases = _cases(field, y0, t, args)

    def forward(solve):
        with torch.no_grad():
            solve()

    def backward(solve):
        field.zero_grad(set_to_none=True)
        _loss(solve()).backward()

    modes = {"forward": forward, "forward+backward": backward}
    times: dict[tuple[str, str], list[float]] = {(c, m): [] for c in cases for m in modes}
    cpu: dict[tuple[str, str], list[float]] = {(c, m): [] for c in cases for m in modes}
    nfe: dict[str, int] = {}
    for name, solve in cases.items():
        field.calls = 0
        forward(solve)
        nfe[name] = field.calls
    for _ in range(args.warmup):
        for solve in cases.values():
            for run in modes.values():
                run(solve)
    for _ in range(args.repeats):
        for name, solve in cases.items():
            for mode, run in modes.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                run(solve)
                times[(name, mode)].append(time.perf_counter() - start)
                cpu[(name, mode)].append(time.process_time() - start_cpu)

    results = []
    for (name, mode), ts in times.items():
        library, method = name.rsplit(" ", 1)
        ms = sorted(1e3 * x for x in ts)
        results.append(
            {
                "library": library,
                "method": method,
                "mode": mode,
                "median_ms": statistics.median(ms),
                "q25_ms": ms[len(ms) // 4],
                "q75_ms": ms[(3 * len(ms)) // 4],
                "nfe": nfe[name],
                "median_us_per_eval": 1e3 * statistics.median(ms) / nfe[name],
                "median_cpu_ms": 1e3 * statistics.median(cpu[(name, mode)]),
            }
        )

    def med(name, mode, key="median_ms"):
        return next(
            r[key] for r in results if f"{r['library']} {r['method']}" == name and r["mode"] == mode
        )

    ratios, cpu_ratios = {}, {}
    pairs = [
        ("torchmali dopri5", "torchdiffeq dopri5"),
        ("torchmali rk4", "torchdiffeq rk4"),
        ("torchmali alf", "TorchDiffEqPack alf"),
        ("torchmali alf", "torchdiffeq dopri5"),
    ]
    for ours, ref in pairs:
        if ours in cases and ref in cases:
            for mode in modes:
                ratios[f"{ours} / {ref} ({mode})"] = med(ours, mode) / med(ref, mode)
                cpu_ratios[f"{ours} / {ref} ({mode})"] = med(ours, mode, "median_cpu_ms") / med(
                    ref, mode, "median_cpu_ms"
                )
    return {
        "config": {
            "batch": args.batch,
            "dim": args.dim,
            "hidden": args.hidden,
            "gain": args.gain,
            "rtol": args.rtol,
            "atol": args.atol,
            "t": t.tolist(),
            "rk4_steps": args.rk4_steps,
            "dtype": str(y0.dtype),
            "threads": args.threads,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "torch": torch.__version__,
            "torchmali": torchmali.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": platform.processor(),
        },
        "results": results,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "notes": [
            "ratios are of median wall times per solve (< 1: torchmali faster); cpu_ratios use "
            "process CPU time, less sensitive to other load on the machine.",
            "torchdiffeq has no ALF: 'torchmali alf / torchdiffeq dopri5' compares different methods "
            "(ALF is second order and needs many more steps); the like-for-like ALF reference is "
            "TorchDiffEqPack's sym12async (the original MALI code), which also re-evaluates every "
            "accepted step.",
            "torchdiffeq's 'rk4' is the 3/8-rule variant: 4 evaluations per step like torchmali's.",
        ],
    }


def print_table(report: dict) -> None:
    print(
        f"{'case':<26}{'mode':<18}{'median ms':>10}{'IQR ms':>16}{'cpu ms':>9}{'nfe':>7}{'us/eval':>9}"
    )
    for r in report["results"]:
        iqr = f"{r['q25_ms']:.2f}-{r['q75_ms']:.2f}"
        name = f"{r['library']} {r['method']}"
        print(
            f"{name:<26}{r['mode']:<18}{r['median_ms']:>10.2f}{iqr:>16}{r['median_cpu_ms']:>9.2f}"
            f"{r['nfe']:>7}"
            f"{r['median_us_per_eval']:>9.1f}"
        )
    print()
    print(f"{'ratio of medians (< 1: torchmali faster)':<62} {'wall':>6} {'cpu':>6}")
    for k, v in report["ratios"].items():
        print(f"{k:<62} {v:6.2f} {report['cpu_ratios'][k]:6.2f}")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = ["forward", "forward+backward"]
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    method_order = {"dopri5": 0, "rk4": 1, "alf": 2}
    names = sorted(
        dict.fromkeys(f"{r['library']} {r['method']}" for r in report["results"]),
        key=lambda n: (method_order.get(n.rsplit(" ", 1)[1], 9), not n.startswith("torchmali")),
    )
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, mode in zip(axes, modes, strict=True):
        rows = {f"{r['library']} {r['method']}": r for r in report["results"] if r["mode"] == mode}
        ms = [rows[n]["median_ms"] for n in names]
        colors = ["tab:blue" if n.startswith("torchmali") else "tab:gray" for n in names]
        bars = ax.barh(names, ms, color=colors)
        for bar, n in zip(bars, names, strict=True):
            label = f" {rows[n]['median_ms']:.1f} ms, {rows[n]['nfe']} nfe"
            ax.text(
                bar.get_width(), bar.get_y() + bar.get_height() / 2, label, va="center", fontsize=7
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(min(ms) / 2, max(ms) * 8)
        ax.set_xlabel("median ms per solve (log)")
        ax.set_title(mode)
        ax.invert_yaxis()
    cfg = report["config"]
    fig.suptitle(
        f"tanh MLP, batch {cfg['batch']}, dim {cfg['dim']}, hidden {cfg['hidden']}, "
        f"rtol {cfg['rtol']:g}, atol {cfg['atol']:g}, {cfg['threads']} thread(s), torch {cfg['torch']}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64, help="0: a linear field (loop overhead only)")
    p.add_argument("--gain", type=float, default=1.0, help="scale of the default initial weights")
    p.add_argument("--outputs", type=int, default=5, help="number of output times in [0, 1]")
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--atol", type=float, default=1e-8)
    p.add_argument("--rk4-steps", type=int, default=40, help="a multiple of outputs - 1")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("results/solver_overhead.json"))
    p.add_argument("--figure", type=Path, default=None, help="write a bar chart (PNG) here")
    args = p.parse_args(argv)
    report = measure(args)
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")
    if args.figure is not None:
        plot(report, args.figure)
        print(f"wrote {args.figure}")
    return report


if __name__ == "__main__":
    main()
