"""The training loop shared by every ``torchmali train`` task.

A :class:`Task` says how to build the model, compute a batch's loss, evaluate and plot; the loop
here does the rest: seeding, ``torchrun`` / DDP, per-epoch sharded data order, the progress bar,
solver statistics, peak memory, atomic per-epoch checkpoints, ``--resume`` and ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from torchmali import Mali
from torchmali.experiments import distributed
from torchmali.experiments._files import output_dir, read_checkpoint
from torchmali.experiments.distributed import DistEnv

__all__ = ["Task", "atomic_save", "atomic_write_json", "run_task"]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
# Options that may differ between an interrupted run and its --resume.
_RESUME_FREE = {
    "resume", "epochs", "out", "device", "quiet", "no_plots", "threads", "func", "keep_checkpoints"
}  # fmt: skip


class Task:
    """One training task. Subclasses set the class attributes and implement the methods.

    Attributes:
        name: Task name (``image``, ``timeseries``, ``density``).
        metric: Key of the main test metric in :meth:`evaluate`'s result.
        higher_is_better: Whether the main metric should go up.
    """

    name = ""
    metric = ""
    higher_is_better = False

    def __init__(self, args: argparse.Namespace, env: DistEnv) -> None:
        self.args = args
        self.env = env

    def build(self) -> nn.Module:
        """The model; it must have an ``ode_blocks`` property listing its ODE blocks."""
        raise NotImplementedError

    def ode_kwargs(self) -> dict[str, Any]:
        """The solver settings of every ODE block, from the command line (``--method``,
        ``--gradient``, ``--rtol``, ``--atol``, ``--step-size``, ``--eta``,
        ``--mali-checkpoint-every``)."""
        a = self.args
        options = {"step_size": a.step_size} if a.step_size else {}
        if a.eta is not None:
            options["eta"] = a.eta
        gradient: Any = a.gradient
        # getattr: the configuration of a checkpoint written before the option existed
        if getattr(a, "mali_checkpoint_every", None):
            gradient = Mali(checkpoint_every=a.mali_checkpoint_every)
        return {
            "method": a.method,
            "gradient": gradient,
            "rtol": a.rtol,
            "atol": a.atol,
            "options": options or None,
        }

    def num_train(self) -> int:
        """Number of training examples (indices passed to :meth:`batch_loss` lie below it)."""
        raise NotImplementedError

    def batch_loss(self, model: nn.Module, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        """Scalar training loss of the examples ``idx``."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Test metrics (run on rank 0, model in eval mode)."""
        raise NotImplementedError

    def plot(self, model: nn.Module, out: Path) -> list[str]:
        """Write task-specific figures into ``out``; return their file names."""
        return []

    def final_metrics(self, model: nn.Module) -> dict[str, float]:
        """Checks too costly for every epoch, run once after training (rank 0, eval mode, no
        grad); they go into ``metrics.json``'s ``final`` block."""
        return {}


class _LossModule(nn.Module):
    """Routes the loss computation through ``forward`` so DDP sees it."""

    def __init__(self, model: nn.Module, task: Task) -> None:
        super().__init__()
        self.model = model
        self._task = (task,)  # a tuple: not registered as a submodule

    def forward(self, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        return self._task[0].batch_loss(self.model, idx, epoch)


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary file beside ``path``, then rename it over ``path``: a kill at any
    moment leaves either the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same directory, then rename over ``path``."""
    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_json(obj: Any, path: Path) -> None:
    """Write JSON to a temporary file, then rename over ``path``."""
    _atomic_write(
        path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")
    )


def _atomic_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to a temporary file beside ``dst``, then rename it over ``dst``."""
    _atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return repr(x)


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (global state, for user code)
    torch.manual_seed(seed)


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in sorted(vars(args).items()) if k != "func"}


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _memory_measure(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated (MiB, peak over the epoch, rank 0)"
    return "resource.getrusage(RUSAGE_SELF).ru_maxrss (MiB, peak RSS of rank 0's process so far)"


def _solver_totals(blocks: list[nn.Module]) -> dict[str, float]:
    nfe_f = nfe_b = solves = 0
    mem = 0
    worst = {"drift": 0.0, "parasitic": 0.0}
    for b in blocks:
        for s in b.stats_log or []:
            solves += 1
            nfe_f += getattr(s, "nfe_forward", 0) or 0
            nfe_b += getattr(s, "nfe_backward", 0) or 0
            mem = max(mem, getattr(s, "memory_bytes", 0) or 0)
            for key in worst:
                v = getattr(s, key, None)
                if v is not None and math.isfinite(float(v)):
                    worst[key] = max(worst[key], float(v))
    return {
        "nfe_forward": float(nfe_f),
        "nfe_backward": float(nfe_b),
        "solves": float(solves),
        "solver_memory_bytes": float(mem),
        **worst,
    }


def _load_checkpoint(
    ckpt: dict[str, Any],
    args: argparse.Namespace,
    env: DistEnv,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
) -> tuple[int, list[dict]]:
    old, new = ckpt["config"], _config(args)
    diff = sorted(
        k for k in set(old) | set(new) if k not in _RESUME_FREE and old.get(k) != new.get(k)
    )
    if diff:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise ValueError(
            f"--resume with options that differ from the interrupted run ({detail}); "
            f"rerun with the same options or use a fresh --out directory."
        )
    if len(ckpt["rng"]) != env.world_size:
        raise ValueError(
            f"the checkpoint was written by {len(ckpt['rng'])} process(es) but this "
            f"run has {env.world_size}; resume with the same --nproc_per_node."
        )
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    _set_rng_state(ckpt["rng"][env.rank])
    return ckpt["epoch"] + 1, ckpt["history"]


def _final(history: list[dict], task: Task) -> dict[str, Any]:
    last = history[-1]
    final = {k: v for k, v in last.items() if k.startswith("test_") or k == "train_loss"}
    n = len(history)
    final.update(
        epochs=last["epoch"],
        time_per_epoch_s=sum(h["time_s"] for h in history) / n,
        cpu_time_per_epoch_s=sum(h["cpu_time_s"] for h in history) / n,
        peak_memory_mb=max(h["peak_memory_mb"] for h in history),
        nfe_forward_per_batch=sum(h["nfe_forward_per_batch"] for h in history) / n,
        nfe_backward_per_batch=sum(h["nfe_backward_per_batch"] for h in history) / n,
        solver_memory_bytes=max(h["solver_memory_bytes"] for h in history),
    )
    best = max if task.higher_is_better else min
    final[f"best_{task.metric}"] = best(h[task.metric] for h in history)
    return final


def _plot_curves(history: list[dict], task: Task, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    axes[0].plot(ep, [h["train_loss"] for h in history], "o-")
    axes[0].set(xlabel="epoch", ylabel="train loss", title="training loss")
    axes[1].plot(ep, [h[task.metric] for h in history], "o-", color="C1")
    axes[1].set(xlabel="epoch", ylabel=task.metric, title=f"test ({task.args.gradient})")
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=80)
    plt.close(fig)
    return "learning_curves.png"


def run_task(task_cls: type[Task], args: argparse.Namespace) -> int:
    """Train ``task_cls`` as configured by ``args``; return the process exit code."""
    if args.threads:
        torch.set_num_threads(args.threads)
    env = distributed.init(args.device)
    try:
        _train(task_cls, args, env)
    finally:
        distributed.shutdown(env)
    return 0


def _train(task_cls: type[Task], args: argparse.Namespace, env: DistEnv) -> None:
    out = output_dir(args.out)
    ckpt_path = out / CHECKPOINT
    # read before building anything: a corrupt file stops the run at once, untouched
    ckpt = read_checkpoint(ckpt_path, env.device) if args.resume and ckpt_path.exists() else None
    if args.batch_size < env.world_size:
        raise ValueError(
            f"--batch-size {args.batch_size} is smaller than the number of "
            f"processes ({env.world_size}); it is the global batch size."
        )
    _seed_all(args.seed)
    task = task_cls(args, env)
    model = task.build().to(env.device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, args.epochs))
    start, history = 1, []
    if ckpt is not None:
        start, history = _load_checkpoint(ckpt, args, env, model, opt, sched)
    else:
        if args.resume and env.is_main:
            print(f"no checkpoint in {out}: starting from epoch 1")
        _seed_all(args.seed + 7919 * env.rank)
    wrapper = distributed.wrap(_LossModule(model, task), env)
    blocks = list(model.ode_blocks)
    per_rank = -(-args.batch_size // env.world_size)
    show = env.is_main and not args.quiet and sys.stderr.isatty()
    for epoch in range(start, args.epochs + 1):
        model.train()
        for b in blocks:
            b.stats_log = []
        if env.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(env.device)
        idx = distributed.shard_indices(task.num_train(), epoch, args.seed, env)
        batches = idx.split(per_rank)
        loss_sum, count = 0.0, 0
        t0, c0 = time.perf_counter(), time.process_time()
        bar = tqdm(batches, desc=f"epoch {epoch}/{args.epochs}", disable=not show, leave=False)
        for bidx in bar:
            opt.zero_grad(set_to_none=True)
            loss = wrapper(bidx.to(env.device), epoch)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(bidx)
            count += len(bidx)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if env.device.type == "cuda":
            torch.cuda.synchronize(env.device)
        epoch_time = time.perf_counter() - t0
        cpu_time = time.process_time() - c0
        sched.step()
        totals = _solver_totals(blocks)
        for b in blocks:
            b.stats_log = None
        loss_sum, count, nfe_f, nfe_b = distributed.all_reduce_sum(
            [loss_sum, count, totals["nfe_forward"], totals["nfe_backward"]], env
        )
        n_batches = len(batches) * env.world_size
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": loss_sum / max(count, 1),
            "time_s": epoch_time,
            "cpu_time_s": cpu_time,
            "nfe_forward_per_batch": nfe_f / n_batches,
            "nfe_backward_per_batch": nfe_b / n_batches,
            "solver_memory_bytes": totals["solver_memory_bytes"],
            "drift_max": totals["drift"],
            "parasitic_max": totals["parasitic"],
        }
        if env.is_main:
            model.eval()
            t1 = time.perf_counter()
            with torch.no_grad():
                record.update(task.evaluate(model))
            record["eval_time_s"] = time.perf_counter() - t1
        record["peak_memory_mb"] = _peak_memory_mb(env.device)
        history.append(record)
        rngs = distributed.all_gather_objects(_rng_state(), env)
        if env.is_main:
            # metrics.json first: a kill between the two writes then leaves the
            # metrics of every checkpointed epoch on disk (resume rewrites both).
            _write_metrics(out, task, args, env, history, complete=False, plots=[])
            atomic_save(
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "rng": rngs,
                    "history": history,
                    "config": _config(args),
                },
                ckpt_path,
            )
            if args.keep_checkpoints:
                _atomic_copy(ckpt_path, out / f"checkpoint-epoch{epoch}.pt")
            checks = (
                f"drift {record['drift_max']:.1e}  parasitic {record['parasitic_max']:.2g}  "
                if args.gradient == "mali"
                else ""
            )
            print(
                f"epoch {epoch}/{args.epochs}  train_loss {record['train_loss']:.4f}  "
                f"{task.metric} {record[task.metric]:.4f}  {epoch_time:.1f}s  "
                f"nfe/batch {record['nfe_forward_per_batch']:.0f}+"
                f"{record['nfe_backward_per_batch']:.0f}  {checks}"
                f"peak {record['peak_memory_mb']:.0f} MiB",
                flush=True,
            )
        distributed.barrier(env)
    if env.is_main and history:
        plots = []
        model.eval()
        with torch.no_grad():
            extra = task.final_metrics(model)
            if not args.no_plots:
                plots = [_plot_curves(history, task, out), *task.plot(model, out)]
        _write_metrics(out, task, args, env, history, complete=True, plots=plots, extra=extra)
        final = _final(history, task)
        checks = "".join(f"{k} {v:.4g}, " for k, v in extra.items())
        print(
            f"done: {task.metric} {final[task.metric]:.4f}, {checks}"
            f"{final['time_per_epoch_s']:.1f} s/epoch, peak {final['peak_memory_mb']:.0f} MiB; "
            f"wrote {out / METRICS}",
            flush=True,
        )
    distributed.barrier(env)


def _write_metrics(
    out: Path,
    task: Task,
    args: argparse.Namespace,
    env: DistEnv,
    history: list[dict],
    complete: bool,
    plots: list[str],
    extra: dict[str, float] | None = None,
) -> None:
    atomic_write_json(
        {
            "task": task.name,
            "metric": task.metric,
            "complete": complete,
            "config": _config(args),
            "world_size": env.world_size,
            "device": str(env.device),
            "torch_threads": torch.get_num_threads(),
            "memory_measure": _memory_measure(env.device),
            "epochs": history,
            "final": {**_final(history, task), **(extra or {})},
            "plots": plots,
        },
        out / METRICS,
    )
