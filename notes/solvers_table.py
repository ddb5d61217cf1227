"""Measure, for every registered method: convergence order, evaluations per step, and the largest
difference to torchdiffeq 0.2.5 on the comparison problems of tests/test_solvers_torchdiffeq.py.

Run: cd <worktree> && PYTHONPATH=src:tests python notes/solvers_table.py
"""

from __future__ import annotations

import warnings

import torch

import torchmali
from conftest import TanhField, fitted_order, lotka_volterra, make_linear
from test_solvers import ORDER_OPTIONS, ORDER_STEPS, STEPS, _fixed_errors
from test_solvers_torchdiffeq import _replay

torch.set_num_threads(1)
warnings.simplefilter("ignore")
f64 = torch.float64
try:
    import torchdiffeq
    from torchdiffeq._impl.odeint import SOLVERS as TDE
except ImportError:  # pragma: no cover
    torchdiffeq, TDE = None, {}

linear = make_linear(f64)
field = TanhField(3, f64, seed=7).requires_grad_(False)
y0 = torch.tensor([[0.4, -0.6, 1.0], [-1.0, 0.2, 0.3]], dtype=f64)


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


rows = []
for name, cls in sorted(torchmali.SOLVERS.items()):
    if cls.forward_only:
        order = nfe = "-"
    else:
        steps = ORDER_STEPS.get(name, STEPS)
        opts = ORDER_OPTIONS.get(name, {})
        hs, errs = _fixed_errors(linear, name, opts, steps=steps)
        order = f"{fitted_order(hs, errs):.2f}" + (f" ({opts})" if opts else "")
        if cls.adaptive:
            sol = torchmali.solve(
                lotka_volterra,
                torch.ones(2, dtype=f64),
                [0.0, 3.0],
                rtol=1e-6,
                atol=1e-6,
                method=name,
            )
            nfe = f"{sol.stats.nfe_forward / (sol.stats.n_accepted + sol.stats.n_rejected):.2f} (adaptive, LV 1e-6)"
        else:
            sol = torchmali.solve(
                linear.f, linear.y0, [0.0, 1.0], method=name, options={"step_size": 1 / 16}
            )
            nfe = f"{sol.stats.nfe_forward / sol.stats.n_accepted:.2f} (16 fixed steps)"
    diff = "n/a (not in torchdiffeq 0.2.5)"
    if name in TDE:
        t = torch.tensor([0.0, 0.5, 1.0], dtype=f64)
        if cls.forward_only:
            rounded = lambda t, y: field(t.float().double(), y)  # noqa: E731
            kw = dict(method=name, rtol=1e-8, atol=1e-9)
            diff = (
                f"{rel(torchmali.odeint(rounded, y0, t, **kw), torchdiffeq.odeint(rounded, y0, t, **kw)):.1e}"
                f" (float32-rounded time); exact time {rel(torchmali.odeint(field, y0, t, **kw), torchdiffeq.odeint(field, y0, t, **kw)):.1e}"
            )
        elif not cls.adaptive:
            kw = dict(method=name, options={"step_size": 1 / 16})
            diff = f"{rel(torchmali.odeint(field, y0, t, **kw), torchdiffeq.odeint(field, y0, t, **kw)):.1e} (same grid)"
        else:
            theirs, acc, ours, _ = _replay(
                name,
                field,
                y0,
                torch.tensor([0.0, 0.3, 0.95, 1.7], dtype=f64),
                1e-9 if cls.order > 2 else 1e-7,
            )
            steps_diff = max(rel(o, a[1]) for a, o in zip(acc, ours, strict=True))
            tol = 1e-8 if cls.order > 2 else 1e-6
            tt = torch.tensor([0.0, 0.5, 1.3, 2.0, 2.7, 3.0], dtype=f64)
            kw = dict(method=name, rtol=tol, atol=tol)
            whole = rel(
                torchmali.odeint(lotka_volterra, torch.ones(2, dtype=f64), tt, **kw),
                torchdiffeq.odeint(lotka_volterra, torch.ones(2, dtype=f64), tt, **kw),
            )
            diff = f"{steps_diff:.1e} (same steps); {whole:.1e} (whole call, LV tol {tol:.0e})"
    rows.append((name, str(cls.order), order, nfe, diff))

print(
    "| method | declared order | measured order | NFE per step | max rel. difference to torchdiffeq 0.2.5 |"
)
print("|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
