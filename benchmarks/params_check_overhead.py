"""Cost of the ``params=`` check (``torchmali._params``) on the training tasks' batches.

For each ``torchmali train`` task (full-size default model, ``--gradient`` as given), one training
batch (forward + backward) is timed with the check as shipped and with it replaced by a plain
evaluation, alternating A/B ``--repeats`` times; the median ratio is printed. The check adds no
evaluation: its cost is building one evaluation's graph instead of running it without autograd,
plus a walk over that graph, once per solve.

    python benchmarks/params_check_overhead.py --gradient mali --repeats 30
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from torchmali import _params
from torchmali.cli import build_parser
from torchmali.experiments.distributed import DistEnv
from torchmali.experiments.train import TASKS, resolve

_CHECK = _params.ParamsProbe.__call__
_INSIDE: list[float] = []  # seconds spent in the (checked or plain) first evaluation


def _checked(self, evaluate, y):
    t0 = time.perf_counter()
    out = _CHECK(self, evaluate, y)
    _INSIDE.append(time.perf_counter() - t0)
    return out


def _plain(self, evaluate, y):  # the evaluation the solve would make without the check
    t0 = time.perf_counter()
    out = evaluate(y)
    _INSIDE.append(time.perf_counter() - t0)
    return out


def _batch(task, model, idx) -> float:
    t0 = time.perf_counter()
    loss = task.batch_loss(model, idx, 1)
    loss.backward()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gradient", default="mali")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--quick", action="store_true", help="the tasks' --quick models")
    a = p.parse_args()
    torch.set_num_threads(1)
    for name in a.tasks.split(","):
        argv = ["train", name, "--gradient", a.gradient, "--device", "cpu"]
        args = resolve(build_parser().parse_args(argv + (["--quick"] if a.quick else [])))
        torch.manual_seed(0)
        task = TASKS[name][1](args, DistEnv())
        model = task.build()
        model.train()
        idx = torch.arange(min(args.batch_size, task.num_train()))
        times: dict[str, list[float]] = {"check": [], "plain": []}
        inside: dict[str, list[float]] = {"check": [], "plain": []}
        solves = 0
        for r in range(a.repeats + 2):
            for mode in ("check", "plain") if r % 2 else ("plain", "check"):
                _params.ParamsProbe.__call__ = _checked if mode == "check" else _plain
                _INSIDE.clear()
                model.zero_grad(set_to_none=True)
                for b in model.ode_blocks:
                    b.stats_log = []
                dt = _batch(task, model, idx)
                solves = sum(len(b.stats_log) for b in model.ode_blocks)
                if r >= 2:  # warm-up
                    times[mode].append(dt)
                    inside[mode].append(sum(_INSIDE))
        _params.ParamsProbe.__call__ = _CHECK
        ratios = [c / p for c, p in zip(times["check"], times["plain"], strict=True)]
        med_c, med_p = statistics.median(times["check"]), statistics.median(times["plain"])
        extra = statistics.median(inside["check"]) - statistics.median(inside["plain"])
        print(
            f"{name:10s} {a.gradient:10s} batch {len(idx):4d}, {solves} solve(s)/batch: "
            f"with check {1e3 * med_c:8.1f} ms, without {1e3 * med_p:8.1f} ms, "
            f"median paired ratio {statistics.median(ratios):.3f} "
            f"(IQR {statistics.quantiles(ratios, n=4)[0]:.3f}-{statistics.quantiles(ratios, n=4)[2]:.3f}); "
            f"first evaluation {1e3 * statistics.median(inside['check']):.2f} ms checked vs "
            f"{1e3 * statistics.median(inside['plain']):.2f} ms plain: +{1e3 * extra:.2f} ms "
            f"= {100 * extra / med_p:.1f}% of the batch"
        )


if __name__ == "__main__":
    main()
