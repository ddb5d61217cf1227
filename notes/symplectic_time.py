"""Forward+backward time of symplectic vs direct and checkpoint, dopri5 (median of repeats).

Methods are interleaved within each repeat so that machine-load drift hits them alike."""

import statistics
import sys
import time

import torch

import torchmali
from torchmali.experiments.bench.workloads import WORKLOADS, build_problem

torch.set_num_threads(1)
wl = sys.argv[1] if len(sys.argv) > 1 else "mlp"
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 15
p = build_problem(WORKLOADS[wl], torch.float32, "cpu")
configs = [
    ("n=10", {"step_size": 1 / 10}, 1e-7, 1e-7),
    ("n=100", {"step_size": 1 / 100}, 1e-7, 1e-7),
    ("rtol=atol=1e-4", None, 1e-4, 1e-4),
    ("rtol=atol=1e-7", None, 1e-7, 1e-7),
]
methods = ["direct", "checkpoint", "symplectic"]
for label, opts, rtol, atol in configs:
    times = {m: [] for m in methods}
    info = {}
    for r in range(reps + 2):
        for m in methods:
            t0 = time.perf_counter()
            sol = torchmali.solve(
                p.func, p.y0, p.t, rtol=rtol, atol=atol, method="dopri5", options=opts, gradient=m
            )
            g = torch.autograd.grad(p.loss(sol.ys), p.parameters())
            dt = time.perf_counter() - t0
            if r >= 2:
                times[m].append(dt)
            info[m] = (sol.stats.n_accepted, sol.stats.nfe_forward, sol.stats.nfe_backward)
    med = {m: statistics.median(v) for m, v in times.items()}
    print(
        f"{wl} dopri5 {label} (steps {info['direct'][0]}): "
        + ", ".join(f"{m} {med[m] * 1e3:.1f} ms" for m in methods)
        + f" | sym/direct {med['symplectic'] / med['direct']:.2f}, ckpt/direct {med['checkpoint'] / med['direct']:.2f}, sym/ckpt {med['symplectic'] / med['checkpoint']:.2f}"
        + f" | nfe_bwd ckpt {info['checkpoint'][2]} sym {info['symplectic'][2]}",
        flush=True,
    )
