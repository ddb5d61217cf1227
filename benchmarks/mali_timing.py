"""Time MALI's (or another method's) forward + backward against a baseline copy of torchmali.

Make the baseline from any commit (the package uses relative imports, so a renamed copy imports
side by side with the working tree)::

    mkdir -p /tmp/base && git archive REV src/torchmali | tar -x -C /tmp/base
    mv /tmp/base/src/torchmali /tmp/base/torchmali_old
    PYTHONPATH=src python benchmarks/mali_timing.py --baseline /tmp/base

Workload: an MLP field (dim 64, hidden 256, batch 128, float32, one thread; ``--hidden``,
``--batch``), 200 fixed ALF steps (``--steps``), loss = sum of the final state, forward + backward. The two versions alternate call by
call (so drift of the machine's load hits both alike); the median of ``--repeats`` calls after
``--warmup`` calls is reported, with each version's ratio to direct backpropagation, and the
median of the paired per-round ratios new/old. ``--clock cpu`` measures the process's CPU time
instead of wall-clock time (less sensitive to other processes on a loaded machine).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", help="directory holding a package torchmali_old")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--method", default="alf", help="a reversible solver (eta only for alf)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--gradients", default="mali",
                   help="comma-separated, timed beside direct ('forward': a no-grad solve)")  # fmt: skip
    a = p.parse_args()
    torch.set_num_threads(1)
    versions = {"new": importlib.import_module("torchmali")}
    if a.baseline:
        sys.path.insert(0, a.baseline)
        versions["old"] = importlib.import_module("torchmali_old")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, a.hidden), torch.nn.Tanh(), torch.nn.Linear(a.hidden, 64)
    )
    y0 = torch.randn(a.batch, 64, requires_grad=True)
    t = torch.tensor([0.0, 1.0])
    opts = {"step_size": 1.0 / a.steps, **({"eta": a.eta} if a.method == "alf" else {})}

    clock = time.perf_counter if a.clock == "wall" else time.process_time

    def call(tm, gradient: str) -> float:
        start = clock()
        if gradient == "forward":  # a no-grad forward solve: floor = direct + forward
            with torch.no_grad():
                tm.odeint(lambda t, y: net(y), y0, t, method=a.method, options=opts)
            return clock() - start
        ys = tm.odeint(lambda t, y: net(y), y0, t, method=a.method, options=opts,
                       gradient=gradient, params=list(net.parameters()))  # fmt: skip
        ys[-1].sum().backward()
        return clock() - start

    gradients = [*a.gradients.split(","), "direct"]
    runs = [(name, g) for name in versions for g in gradients]
    times: dict = {r: [] for r in runs}
    for i in range(a.warmup + a.repeats):
        for name, g in runs:
            dt = call(versions[name], g)
            if i >= a.warmup:
                times[(name, g)].append(dt)
    for name in versions:
        direct = statistics.median(times[(name, "direct")])
        parts = [f"direct {direct * 1e3:.1f} ms"]
        for g in gradients[:-1]:
            m = statistics.median(times[(name, g)])
            parts.append(f"{g} {m * 1e3:.1f} ms ({m / direct:.3f}x direct)")
        print(f"{name}: " + ", ".join(parts))
    if "old" in versions:
        for g in gradients:
            pairs = zip(times[("new", g)], times[("old", g)], strict=True)
            ratio = statistics.median(n / o for n, o in pairs)
            print(f"{g}: median of paired ratios new/old {ratio:.3f} ({a.clock} clock)")


if __name__ == "__main__":
    main()
