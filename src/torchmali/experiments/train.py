"""``torchmali train TASK``: the papers' experiments at a scale that runs on a laptop CPU.

``TASK`` is ``image`` (ODE-ResNet on digits / CIFAR-10), ``timeseries`` (latent ODE on
irregularly sampled series) or ``density`` (FFJORD CNF). Every run shows a progress bar on a
terminal, writes ``metrics.json``, plots and an atomic per-epoch ``checkpoint.pt`` to ``--out``,
and ``--resume`` continues an interrupted run to the same result. Runs under
``torchrun --nproc_per_node=N`` use DistributedDataParallel.
"""

from __future__ import annotations

import argparse
from typing import Any

from torchmali.experiments import density, image, timeseries
from torchmali.experiments._train_common import run_task
from torchmali.gradients import names
from torchmali.gradients import resolve as resolve_gradient
from torchmali.solvers import SOLVERS

__all__ = ["GRADIENTS", "TASKS", "add_parser", "resolve", "run"]

#: every registered gradient method (``torchmali.gradients.names()``)
GRADIENTS = names()
#: solvers tried, in order, when ``--method`` is not given and the task's default does not fit
#: the gradient method (second order and one or two evaluations per step, like ALF)
_FALLBACK_METHODS = ("midpoint", "heun", "rk4", "dopri5")
TASKS: dict[str, Any] = {
    "image": (image, image.ImageTask),
    "timeseries": (timeseries, timeseries.TimeSeriesTask),
    "density": (density, density.DensityTask),
}


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("solver and gradient")
    g.add_argument(
        "--gradient",
        choices=GRADIENTS,
        default="mali",
        help="gradient method (mali needs a reversible solver: alf, reversible_heun, reversible_rk)",
    )
    g.add_argument(
        "--method",
        default=None,
        help="solver (default alf, or midpoint for a gradient method that refuses alf, e.g. "
        "symplectic; any of torchmali.SOLVERS such as dopri5, rk4, tsit5)",
    )
    g.add_argument(
        "--step-size",
        type=float,
        default=None,
        help="fixed step size (0 = adaptive); default depends on the task",
    )
    g.add_argument("--eta", type=float, default=None, help="ALF damping eta (default 1.0)")
    g.add_argument(
        "--mali-checkpoint-every",
        type=int,
        default=None,
        metavar="K",
        help="with --gradient mali: restart MALI's reconstruction from a state stored every K "
        "steps (Mali(checkpoint_every=K)), which bounds its drift",
    )
    g.add_argument("--rtol", type=float, default=None)
    g.add_argument("--atol", type=float, default=None)
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="global batch size (split over torchrun processes)",
    )
    t.add_argument("--lr", type=float, default=None, help="Adam learning rate (cosine decay)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--limit", type=int, default=None, help="use at most this many training examples"
    )
    t.add_argument(
        "--quick",
        action="store_true",
        help="a small run of a minute or two (smaller data, model and fewer epochs)",
    )
    r = p.add_argument_group("run")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K")
    r.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    r.add_argument("--out", default=None, help="output directory (default results/train/TASK-...)")
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.pt (same options) if it exists",
    )
    r.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="also keep every epoch's checkpoint as OUT/checkpoint-epochN.pt",
    )
    r.add_argument("--no-plots", action="store_true", help="skip the figures")
    r.add_argument("--quiet", action="store_true", help="no progress bar")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train`` (with one sub-command per task) on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "train",
        allow_abbrev=False,
        help="train an ODE model: image, timeseries or density",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    parser.set_defaults(func=run)
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    for name, (module, _) in TASKS.items():
        p = tasks.add_parser(
            name,
            help=module.__doc__.split("\n")[0].split(": ", 1)[-1],
            description=module.__doc__,
            allow_abbrev=False,  # "--data" must not silently become "--dataset"
        )
        _common(p)
        module.add_arguments(p)
        p.set_defaults(func=run)
    return parser


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the options left unset from the task's defaults (or its ``--quick`` defaults).

    Full runs take the task's ``DEFAULTS`` updated with ``specific_defaults(args)``, the
    settings of the data set or model preset chosen (e.g. a wider latent ODE for the membrane
    recording); ``--quick`` runs take ``QUICK`` alone.

    Raises:
        ValueError: On inconsistent options (e.g. MALI without ALF), with the fix.
    """
    module, _ = TASKS[args.task]
    defaults = module.QUICK if args.quick else {**module.DEFAULTS, **module.specific_defaults(args)}
    method_given = getattr(args, "method", None) is not None
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    gradient = resolve_gradient(args.gradient)
    if not method_given and not gradient.accepts(SOLVERS[args.method], bool(args.step_size)):
        # the task's default solver (ALF) does not fit this gradient method (e.g. symplectic
        # needs a Runge-Kutta tableau): take the first fitting one of the same cost class
        args.method = next(
            (m for m in _FALLBACK_METHODS if gradient.accepts(SOLVERS[m], bool(args.step_size))),
            args.method,
        )
    solver = SOLVERS.get(args.method)
    if solver is not None and not gradient.accepts(solver, bool(args.step_size)):
        fits = [n for n, c in SOLVERS.items() if gradient.accepts(c, bool(args.step_size))]
        raise ValueError(
            f"--gradient {args.gradient} cannot differentiate --method {args.method}; use "
            f"--method {' or --method '.join(fits)} (or another --gradient)."
        )
    if args.mali_checkpoint_every is not None and (
        args.gradient != "mali" or args.mali_checkpoint_every < 1
    ):
        raise ValueError(
            f"--mali-checkpoint-every {args.mali_checkpoint_every} needs --gradient mali and "
            "K >= 1 (it sets Mali(checkpoint_every=K)); drop it for other gradient methods."
        )
    if args.step_size is not None and args.step_size <= 0:
        args.step_size = None
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        raise ValueError("--epochs and --batch-size must be >= 1 and --lr > 0.")
    if args.out is None:
        args.out = f"results/train/{args.task}-{args.gradient}" + ("-quick" if args.quick else "")
    return args


def run(args: argparse.Namespace) -> int:
    """Run ``torchmali train`` with parsed arguments; return the exit code.

    Raises:
        ValueError: On invalid options or data (the command line prints it and exits 2).
    """
    args = resolve(args)
    return run_task(TASKS[args.task][1], args)
