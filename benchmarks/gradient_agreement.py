"""How far each gradient method's parameter gradient is from the exact one, at saved checkpoints.

Usage::

    python benchmarks/gradient_agreement.py CKPT [CKPT ...] [--batches 4] [--json OUT.json]

Each ``CKPT`` is a ``checkpoint.pt`` written by ``torchmali train`` (any task). The model is
rebuilt from the checkpoint's configuration and, for a few training batches, the gradient of the
training loss is computed with every gradient method on the run's own solver and grid. The
reference is ``direct`` (backpropagation through the solver's operations: the exact gradient of
the discrete solve); the table gives each method's relative error ``|g - g_direct| / |g_direct|``
and cosine similarity with it, the worst over the batches, and the forward solve's
``SolveStats.parasitic`` (ALF's parasitic mode relative to the derivative, measured by MALI's
backward pass) and MALI's reconstruction drift. ``mali K=..`` is ``Mali(checkpoint_every=K)``. Every method sees the same batch and the same random draws (the latent ODE's
``z0`` sample, Hutchinson's noise): the random state is reset before each loss.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from torchmali import SOLVERS, Mali
from torchmali.experiments.distributed import DistEnv
from torchmali.experiments.train import GRADIENTS, TASKS
from torchmali.gradients import resolve


def compared(k: int) -> dict[str, Any]:
    """Column label -> the ``gradient=`` compared with ``direct``."""
    methods: dict[str, Any] = {g: g for g in GRADIENTS if g != "direct"}
    methods[f"mali K={k}"] = Mali(checkpoint_every=k)
    return methods


def load(path: Path):
    """The task and model of a checkpoint, its epoch and its run's options."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    args = argparse.Namespace(**ckpt["config"])
    args.device = "cpu"
    task = TASKS[args.task][1](args, DistEnv())
    model = task.build()
    model.load_state_dict(ckpt["model"])
    return task, model, ckpt["epoch"], args


def gradient(task, model, idx: torch.Tensor, epoch: int, method: Any, seed: int):
    """The flattened parameter gradient of the batch ``idx`` with ``method``; the stats of the
    batch's solves."""
    for block in model.ode_blocks:
        block.gradient = method
        block.stats_log = []
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    task.batch_loss(model, idx, epoch).backward()
    flat = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    stats = [s for block in model.ode_blocks for s in block.stats_log]
    return flat.double(), stats


def agreement(path: Path, batches: int, k: int) -> dict:
    task, model, epoch, args = load(path)
    model.train()
    gen = torch.Generator().manual_seed(0)
    result: dict = {"checkpoint": str(path), "epoch": epoch, "task": args.task}
    result.update(dataset=getattr(args, "dataset", None), trained_with=args.gradient)
    solver = SOLVERS[args.method]
    methods = {  # the methods that can differentiate the run's solver
        label: g
        for label, g in compared(k).items()
        if resolve(g).accepts(solver, bool(args.step_size))
    }
    errors: dict[str, list[tuple[float, float]]] = {label: [] for label in methods}
    parasitic, drift = [], []
    for b in range(batches):
        idx = torch.randperm(task.num_train(), generator=gen)[: args.batch_size]
        ref, _ = gradient(task, model, idx, epoch, "direct", seed=b)
        for label, g in methods.items():
            got, stats = gradient(task, model, idx, epoch, g, seed=b)
            rel = float((got - ref).norm() / ref.norm())
            cos = float(torch.dot(got, ref) / (got.norm() * ref.norm()))
            errors[label].append((rel, cos))
            if label == "mali":
                parasitic += [s.parasitic for s in stats if s.parasitic is not None]
                drift += [s.drift for s in stats if s.drift is not None]
    result["gradient_norm"] = float(ref.norm())
    result["methods"] = {
        label: {"rel_error_max": max(r for r, _ in v), "cosine_min": min(c for _, c in v)}
        for label, v in errors.items()
    }
    result["parasitic_max"] = max(parasitic) if parasitic else None
    result["drift_max"] = max(drift) if drift else None
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", type=Path, nargs="+")
    p.add_argument("--batches", type=int, default=4, help="training batches per checkpoint")
    p.add_argument(
        "--mali-k", type=int, default=10, help="K of the Mali(checkpoint_every=K) column"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = p.parse_args(argv)
    results = [agreement(path, a.batches, a.mali_k) for path in a.checkpoints]
    labels = list(compared(a.mali_k))
    head = ["checkpoint", "epoch", *(f"{g}: rel. error / cosine" for g in labels)]
    head += ["parasitic", "MALI drift"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        cells = [f"`{r['checkpoint']}`", str(r["epoch"])]
        for label in labels:
            m = r["methods"].get(label)
            cells.append(f"{m['rel_error_max']:.2g} / {m['cosine_min']:.4f}" if m else "—")
        for key in ("parasitic_max", "drift_max"):
            cells.append("—" if r[key] is None else f"{r[key]:.2g}")
        print("| " + " | ".join(cells) + " |")
    if a.json is not None:
        a.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
