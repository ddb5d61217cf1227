"""Time MALI's forward + backward against a baseline copy of torchmali, in one process.

Make the baseline from any commit (the package uses relative imports, so a renamed copy imports
side by side with the working tree)::

    mkdir -p /tmp/base && git archive REV src/torchmali | tar -x -C /tmp/base
    mv /tmp/base/src/torchmali /tmp/base/torchmali_old
    PYTHONPATH=src python benchmarks/mali_timing.py --baseline /tmp/base

Workload: an MLP field (dim 64, hidden 256, batch 128, float32, one thread), 200 fixed ALF
steps, loss = sum of the final state, forward + backward. The two versions alternate call by
call (so drift of the machine's load hits both alike); the median of ``--repeats`` calls after
``--warmup`` calls is reported, with each version's ratio to direct backpropagation.
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
    p.add_argument("--eta", type=float, default=1.0)
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
    y0 = torch.randn(128, 64, requires_grad=True)
    t = torch.tensor([0.0, 1.0])
    opts = {"step_size": 1.0 / a.steps, "eta": a.eta}

    def call(tm, gradient: str) -> float:
        start = time.perf_counter()
        ys = tm.odeint(lambda t, y: net(y), y0, t, method="alf", options=opts, gradient=gradient,
                       params=list(net.parameters()))  # fmt: skip
        ys[-1].sum().backward()
        return time.perf_counter() - start

    runs = [(name, g) for name in versions for g in ("mali", "direct")]
    times: dict = {r: [] for r in runs}
    for i in range(a.warmup + a.repeats):
        for name, g in runs:
            dt = call(versions[name], g)
            if i >= a.warmup:
                times[(name, g)].append(dt)
    for name in versions:
        mali = statistics.median(times[(name, "mali")])
        direct = statistics.median(times[(name, "direct")])
        print(f"{name}: mali {mali * 1e3:.1f} ms, direct {direct * 1e3:.1f} ms, "
              f"mali/direct {mali / direct:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
