"""Stability of the reversible schemes, measured: forward error, reconstruction error and the
one-step map's roots on ``y' = λy``, the dissipative ``z' = −z`` case, and the constant of the
round-off bound behind ``Mali(checkpoint_every="auto")``.

Schemes: ALF (η = 1 and damped), reversible Heun, and McCallum–Foster's wrapper around dopri5 at
several couplings ``λ_c``. Four measurements, all in float64 unless stated:

* ``linear``: for ``hλ`` on the negative real axis and on the imaginary axis (``h = 0.1``,
  ``N = 400`` steps): the forward error ``|y_N − e^{λT} y_0|`` (``|y_0| = 1``), the reconstruction
  error (``N`` inverse steps from ``(y_N, state_N)``, the largest relative error of ``y_0`` and the
  solver state, as MALI measures it), and the roots ``μ`` of the one-step map (its eigenvalues,
  from two steps of the solver itself): ``max |μ|`` (forward growth per step), ``1 / min |μ|``
  (reconstruction growth per step), ``|det|``.
* ``dissipative``: ``z' = −wz``, ``w = 1``, ``T = 20``, ``h = 0.05``: ``z(T)`` (exact ``2.1e-9``),
  and the default ``gradient="mali"`` against ``gradient="direct"`` (``d z(T) / d(z0, w)``), with
  the safety net's statistics, and the same without the fallback.
* ``bound``: the constant ``C`` of the drift model ``C ε (ρ^K − 1)/(ρ − 1)``: measured drift over
  segments of ``K`` steps for damped ALF (``ρ = 1/|1 − 2η|``), a tanh MLP and a linear field,
  float32 and float64.

Usage::

    python benchmarks/reversible_stability.py          # docs/figures/reversible_stability.{json,png}
    python benchmarks/reversible_stability.py --out-dir results/ --quick
"""

from __future__ import annotations

import argparse
import cmath
import json
import math
import platform
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import torchmali
from torchmali._state import leaves
from torchmali.solvers import ALF, ReversibleHeun, ReversibleRK

DT = torch.float64
REAL = (-1e-4, -1e-3, -3e-3, -1e-2, -0.03, -0.1, -0.3, -1.0)
IMAG = (1e-3, 1e-2, 0.1, 0.3, 0.6, 0.9, 0.99, 1.2)


def schemes() -> dict[str, torchmali.solvers.ReversibleSolver]:
    out = {"ALF eta=1": ALF(1.0), "ALF eta=0.9": ALF(0.9), "ALF eta=0.75": ALF(0.75),
           "reversible Heun": ReversibleHeun()}  # fmt: skip
    for c in (0.999, 0.99, 0.9, 0.5):
        out[f"reversible dopri5 λc={c:g}"] = ReversibleRK("dopri5", c)
    return out


def _linear_field(z: complex, h: float):
    """``y' = A y`` in real form: a scalar for real ``hλ``, a 2x2 rotation for imaginary."""
    if z.imag == 0:
        A = torch.tensor([[z.real / h]], dtype=DT)
    else:
        w = z.imag / h
        A = torch.tensor([[0.0, -w], [w, 0.0]], dtype=DT)
    return A, (lambda t, y: y @ A.T)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    r = float((a - b).norm() / (b.norm() + 1e-300))
    return r if math.isfinite(r) else math.inf


def linear_errors(solver, z: complex, h: float = 0.1, n: int = 400) -> dict:
    A, f = _linear_field(z, h)
    y0 = torch.zeros(A.shape[0], dtype=DT)
    y0[0] = 1.0
    s0 = solver.init(f, 0.0, y0)
    y, s = y0, s0
    with torch.no_grad():
        for i in range(n):
            r = solver.step(f, i * h, h, y, s, with_error=False)
            y, s = r.y1, r.state1
        exact = torch.linalg.matrix_exp(A * (n * h)) @ y0
        forward = _rel(y, exact) * float(exact.norm()) / float(y0.norm())  # absolute, |y0| = 1
        if not math.isfinite(float(y.norm())):
            return {"forward": math.inf, "reconstruction": math.inf}
        for i in range(n, 0, -1):
            y, s = solver.inverse(f, i * h, h, y, s)
    rec = max(_rel(a, b) for a, b in zip([y, *leaves(s)], [y0, *leaves(s0)], strict=True))
    return {"forward": forward if math.isfinite(forward) else math.inf, "reconstruction": rec}


def one_step_roots(solver, z: complex, h: float = 0.1) -> list[complex]:
    """Eigenvalues of the one-step map on ``y' = λy`` (complex scalar), acting on ``(y, aux)``:
    aux = ALF's v, reversible Heun's ŷ (its f̂ = λŷ), the wrapper's z."""
    lam = z / h
    f = lambda t, y: lam * y  # noqa: E731
    cols = []
    for e in ((1.0, 0.0), (0.0, 1.0)):
        y = torch.tensor([e[0]], dtype=torch.complex128)
        aux = torch.tensor([e[1]], dtype=torch.complex128)
        if isinstance(solver, ReversibleHeun):
            state = (aux, lam * aux)
        elif isinstance(solver, ALF):
            state = aux
        else:
            state = aux
        r = solver.step(f, 0.0, h, y, state, with_error=False)
        aux1 = r.state1[0] if isinstance(solver, ReversibleHeun) else r.state1
        cols.append(torch.cat([r.y1, aux1]))
    m = torch.stack(cols, 1)
    return [complex(v) for v in torch.linalg.eigvals(m)]


def linear_table(quick: bool) -> list[dict]:
    rows = []
    zs = [complex(x, 0) for x in REAL] + [complex(0, y) for y in IMAG]
    if quick:
        zs = zs[::2]
    for name, solver in schemes().items():
        for z in zs:
            mu = one_step_roots(solver, z)
            phys = min(mu, key=lambda m: abs(m - cmath.exp(z)))
            par = mu[1] if phys is mu[0] else mu[0]
            row = {"scheme": name, "axis": "real" if z.imag == 0 else "imaginary",
                   "h_lambda": z.real if z.imag == 0 else z.imag,
                   "exp_abs": abs(cmath.exp(z)), "mu_physical": abs(phys), "mu_parasitic": abs(par),
                   "forward_growth": max(abs(m) for m in mu),
                   "reconstruction_growth": 1.0 / min(abs(m) for m in mu),
                   "det": abs(mu[0] * mu[1])}  # fmt: skip
            row.update(linear_errors(solver, z))
            rows.append(row)
    return rows


def dissipative_table() -> list[dict]:
    """z' = -w z, T = 20, h = 0.05 (and smaller h for the wrapper at 0.999)."""
    rows = []
    cases = [(name, s, 0.05) for name, s in schemes().items()]
    cases += [
        ("reversible dopri5 λc=0.999", ReversibleRK("dopri5", 0.999), h) for h in (0.01, 1e-3)
    ]
    for name, solver, h in cases:
        opts = {"step_size": h}
        if isinstance(solver, ALF):
            method, opts["eta"] = "alf", solver.eta
        else:
            method = _registered(solver)
        row = {"scheme": name, "h": h}
        for label, gradient in [("direct", "direct"), ("checkpoint", "checkpoint"),
                                ("mali", torchmali.Mali()),
                                ("mali_no_fallback", torchmali.Mali(fallback=False,
                                                                    on_drift="warn"))]:  # fmt: skip
            y0 = torch.ones(1, dtype=DT, requires_grad=True)
            w = torch.ones((), dtype=DT, requires_grad=True)
            start = time.perf_counter()
            sol = torchmali.solve(
                lambda t, y, w=w: -w * y,
                y0,
                torch.tensor([0.0, 20.0], dtype=DT),
                method=method,
                options=opts,
                gradient=gradient,
                params=[w],
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torchmali.ReconstructionDriftWarning)
                g = torch.autograd.grad(sol.ys[-1].sum(), [y0, w])
            row[f"{label}_seconds"] = time.perf_counter() - start
            if label == "direct":
                ref = g
                row["z_T"] = float(sol.ys[-1].detach())
                row["abs_error"] = abs(row["z_T"] - math.exp(-20.0))
                continue
            row[f"{label}_grad_error"] = max(_rel(a, b) for a, b in zip(g, ref, strict=True))
            if label == "checkpoint":  # the conditioning floor of any exact method
                continue
            st = sol.stats
            row[f"{label}_stats"] = {k: getattr(st, k) for k in (
                "drift", "parasitic", "fallback_segments", "recomputed_steps",
                "checkpoint_interval", "nfe_backward", "memory_bytes")}  # fmt: skip
        rows.append(row)
    return rows


def _registered(solver) -> str:
    """A registry name for a configured solver (the wrapper's base and coupling are
    solver-specific options; until ``options=`` takes them, a subclass carries them)."""
    if not isinstance(solver, ReversibleRK):
        return solver.name
    base, coupling = solver.base, solver.coupling

    class Configured(ReversibleRK):
        name = f"bench_reversible_{base}_{coupling:g}"

        def __init__(self) -> None:
            super().__init__(base=base, coupling=coupling)

    torchmali.SOLVERS[Configured.name] = Configured
    return Configured.name


class MLP(nn.Module):
    def __init__(self, dim: int = 3, hidden: int = 16) -> None:
        super().__init__()
        self.l1 = nn.Linear(dim + 1, hidden)
        self.l2 = nn.Linear(hidden, dim)

    def forward(self, t, y):
        tt = t.expand(*y.shape[:-1], 1)
        return self.l2(torch.tanh(self.l1(torch.cat([y, tt], -1))))


def bound_table(quick: bool) -> list[dict]:
    rows = []
    for dtype in (torch.float64, torch.float32):
        eps = torch.finfo(dtype).eps
        torch.manual_seed(7)
        mlp = MLP().to(dtype)
        y0 = torch.randn(4, 3, dtype=dtype)
        A = torch.tensor([[-0.1, 2.0, 0.0], [-2.0, -0.1, 0.0], [0.0, 0.0, -0.5]], dtype=dtype)
        for field_name, field in (("tanh MLP", mlp), ("linear", lambda t, y, A=A: y @ A.T)):
            for eta in (0.95, 0.75, 0.6, 0.55):
                rho = 1.0 / abs(1.0 - 2.0 * eta)
                for k in (2, 5, 10, 20, 40) if not quick else (5, 20):
                    if rho**k * eps > 1e-1:
                        continue
                    g = torchmali.Mali(checkpoint_every=k, drift_tol=None, fallback=False)
                    y = y0.clone().requires_grad_(True)
                    sol = torchmali.solve(field, y, torch.tensor([0.0, 5.0], dtype=dtype),
                                          method="alf", options={"step_size": 0.025, "eta": eta},
                                          gradient=g, params=list(mlp.parameters()))  # fmt: skip
                    sol.ys[-1].sum().backward()
                    model = eps * (rho**k - 1) / (rho - 1)
                    rows.append({"dtype": str(dtype).removeprefix("torch."), "field": field_name,
                                 "eta": eta, "K": k, "drift": sol.stats.drift,
                                 "model_C1": model, "C": sol.stats.drift / model})  # fmt: skip
    return rows


def plot(rows: list[dict], path: Path) -> None:
    """Top: the parasitic root against the physical one per step (above 1: the parasitic mode
    grows relative to the solution going forward; below 1: the inverse grows it by the reciprocal
    in reconstruction). Bottom: the measured errors after 400 steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), sharex="col")
    names = list(dict.fromkeys(r["scheme"] for r in rows))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    clip = lambda v: min(max(v, 1e-18), 1e30)  # noqa: E731
    for col, axis in enumerate(("real", "imaginary")):
        top, bottom = axes[0][col], axes[1][col]
        for i, name in enumerate(names):
            sel = [r for r in rows if r["scheme"] == name and r["axis"] == axis]
            x = [abs(r["h_lambda"]) for r in sel]
            c = colors[i % len(colors)]
            ratio = [r["mu_parasitic"] / r["mu_physical"] for r in sel]
            top.plot(x, ratio, "-o", ms=3, color=c, label=name)
            bottom.plot(x, [clip(r["forward"]) for r in sel], "-o", ms=3, color=c)
            bottom.plot(x, [clip(r["reconstruction"]) for r in sel], "--x", ms=4, color=c)
        top.axhline(1.0, color="k", lw=0.8)
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
        where = "negative real axis" if axis == "real" else "imaginary axis"
        top.set_title(f"|μ_parasitic / μ_physical| per step, hλ on the {where}")
        bottom.set_title("error after 400 steps: forward (—), reconstruction (- -)")
        bottom.set_xlabel(f"|hλ|  (hλ on the {where})")
    axes[0][0].set_ylabel("> 1: forward grows the parasitic mode\n< 1: the inverse grows it")
    axes[1][0].set_ylabel("error (clipped to [1e-18, 1e30])")
    axes[0][1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default="docs/figures")
    p.add_argument("--quick", action="store_true", help="fewer points (a smoke run)")
    p.add_argument("--plot-only", action="store_true", help="redraw the PNG from the JSON")
    a = p.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if a.plot_only:
        data = json.loads((out / "reversible_stability.json").read_text())
        plot(data["linear"], out / "reversible_stability.png")
        return
    linear = linear_table(a.quick)
    result = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "linear": linear,
        "dissipative": dissipative_table(),
        "bound": bound_table(a.quick),
    }
    (out / "reversible_stability.json").write_text(json.dumps(result, indent=1))
    plot(linear, out / "reversible_stability.png")
    for r in result["dissipative"]:
        print(r["scheme"], r["h"], f"z(T)={r['z_T']:.3g}", f"mali err={r['mali_grad_error']:.2g}",
              f"checkpoint err={r['checkpoint_grad_error']:.2g}",
              f"no-fallback err={r['mali_no_fallback_grad_error']:.2g}",
              r["mali_stats"])  # fmt: skip
    cs = [r["C"] for r in result["bound"]]
    print(f"bound constant C: {min(cs):.2g} .. {max(cs):.2g} over {len(cs)} runs")


if __name__ == "__main__":
    main()
