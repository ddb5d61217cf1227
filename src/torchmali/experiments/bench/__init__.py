"""``torchmali bench``: memory, time, evaluations, VJPs and gradient error of every gradient method.

For each workload (an MLP and a convolutional Neural ODE, loss on the final state or on several
output times; a dissipative affine ODE over a long horizon), each gradient method of torchmali's
registry (``torchmali.gradients.names()``: ``direct``, ``adjoint``, ``checkpoint``, ``binomial``,
``mali``, ``symplectic``, ... and every method registered later) with every solver it accepts
(the reversible solvers of ``torchmali.SOLVERS`` for ``mali``), and each installed peer
(torchdiffeq, TorchDiffEqPack), over a sweep of fixed-grid step counts and adaptive tolerances, one
configuration per fresh process (see :mod:`torchmali.experiments.bench.measure`), it writes
``results.json``, ``results.csv``, plots, ``summary.md`` and ``meta.json`` to ``--out``, and prints
the summary.

Example::

    torchmali bench --quick
    torchmali bench --workloads mlp --steps 10,100 --gradients direct,mali --libraries torchmali
    torchmali bench --workloads decay --gradients direct,symplectic,symplectic[checkpoints=4]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from .._files import output_dir
from .plan import (
    DTYPES,
    LIBRARIES,
    SUITES,
    Case,
    every_gradient,
    parse_floats,
    parse_gradients,
    parse_ints,
    parse_names,
)
from .plots import PLOT_FILES, plot
from .report import dissipative_tables, make_record, ratios, summary_tables, write_results
from .runners import support
from .targets import targets, targets_table
from .workloads import WORKLOADS

__all__ = ["add_parser", "build_plan", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``bench`` subcommand on the ``torchmali`` command's subparsers."""
    p = subparsers.add_parser(
        "bench",
        allow_abbrev=False,
        help="benchmark the gradient methods against each other and the peers",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick", action="store_true", help="a smaller sweep (about two minutes on CPU)"
    )
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: results/bench-<timestamp>)",
    )
    p.add_argument("--workloads", help=f"comma-separated, of: {', '.join(WORKLOADS)}")
    p.add_argument(
        "--gradients",
        help=f"comma-separated, of: {', '.join(every_gradient())} (or name[option=value])",
    )
    p.add_argument("--libraries", help=f"comma-separated, of: {', '.join(LIBRARIES)}")
    p.add_argument("--steps", help="fixed-grid step counts, e.g. 10,100,1000")
    p.add_argument("--rtols", help="adaptive tolerances (rtol = atol) for every adaptive solver")
    p.add_argument("--no-adaptive", action="store_true", help="skip the adaptive runs")
    p.add_argument("--dtypes", help="comma-separated, of: float32, float64")
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repetitions per configuration (median reported; default 3, quick 2)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the workloads (default 0)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per configuration (default 1; 0 = torch's default)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds before one configuration is abandoned (default 300)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.set_defaults(func=run)
    return p


def build_plan(args: argparse.Namespace) -> tuple[list[Case], list[tuple[Case, str]]]:
    """Expand the suite selected by ``args`` into the cases to run and the ones to skip.

    Returns:
        ``(to_run, skipped)`` where ``skipped`` pairs each skipped case with the reason.

    Raises:
        ValueError: on an invalid option value (the message names the valid ones).
    """
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        raise ValueError(f"--device must be cpu or cuda, got {args.device!r}")
    import torch

    if args.device != "cpu" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {args.device}: CUDA is not available to this torch "
            f"({torch.__version__}); run on a machine with a GPU and a CUDA build of torch, "
            "or use --device cpu"
        )
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 3)
    if repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {repeats}")
    if args.threads < 0:
        raise ValueError(f"--threads must be 0 (torch's default) or positive, got {args.threads}")
    pick = {  # Case field -> the values kept (None keeps all)
        "workload": args.workloads and parse_names(args.workloads, tuple(WORKLOADS), "workloads"),
        "gradient": args.gradients and parse_gradients(args.gradients),
        "library": args.libraries and parse_names(args.libraries, LIBRARIES, "libraries"),
        "dtype": args.dtypes and parse_names(args.dtypes, DTYPES, "dtypes"),
    }
    steps = args.steps and parse_ints(args.steps, "--steps")
    rtols = args.rtols and parse_floats(args.rtols, "--rtols")
    to_run, skipped, seen = [], [], set()
    for section in SUITES["quick" if args.quick else "default"]:
        if section.steps and steps:
            section = dataclasses.replace(section, steps=steps)
        if section.rtols and (rtols or args.no_adaptive):
            section = dataclasses.replace(section, rtols=() if args.no_adaptive else rtols)
        for case in section.cases(
            device=args.device, repeats=repeats, seed=args.seed, threads=args.threads
        ):
            if case in seen or any(v and getattr(case, k) not in v for k, v in pick.items()):
                continue
            seen.add(case)
            included, note = support(case)
            if not included:
                continue
            if note is None:
                to_run.append(case)
            else:
                skipped.append((case, note))
    return to_run, skipped


def _meta(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    import torch

    versions = {}
    for dist in ("torchmali", "torch", "torchdiffeq", "torchdiffeqpack"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    try:  # the checkout torchmali runs from, if it is one
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    device = args.device
    if device.startswith("cuda") and torch.cuda.is_available():
        device = torch.cuda.get_device_name(torch.device(device))
    return {
        "command": "torchmali bench " + " ".join(argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": args.threads or torch.get_num_threads(),
        "device": device,
        "versions": versions,
        "git_commit": commit or None,
    }


def _dissipative() -> list[str]:
    return [name for name, w in WORKLOADS.items() if w.dissipative]


def run(args: argparse.Namespace) -> int:
    """Run the benchmark configured by ``args``; 0 if every configuration ran or was skipped."""
    from tqdm.auto import tqdm

    from .workers import run_isolated

    # The command as typed (from the console script or python -m torchmali), for the report.
    argv = sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] == "bench" else ["(from Python)"]
    cases, skipped = build_plan(args)  # ValueError: the command line prints it, exits 2
    if args.dry_run:
        for case in cases:
            print(case.label())
        for case, note in skipped:
            print(f"{case.label()}  [skipped: {note}]")
        return 0
    out = output_dir(args.out or Path("results") / time.strftime("bench-%Y%m%d-%H%M%S"))
    meta = _meta(args, argv)
    records = [make_record(case, {"status": "skipped", "note": note}) for case, note in skipped]
    started = time.perf_counter()
    bar = tqdm(total=2 * len(cases), desc="bench", unit="step", disable=not sys.stderr.isatty())

    def progress(n: int, label: str) -> None:
        bar.set_postfix_str(label, refresh=False)
        bar.update(n)

    results = run_isolated(cases, out / "refs", args.timeout, progress)
    bar.close()
    for case, result in zip(cases, results, strict=True):
        records.append(make_record(case, result))
        if result.get("status") == "error":
            print(f"error in {case.label()}: {result.get('note')}", file=sys.stderr)
    meta["duration_s"] = round(time.perf_counter() - started, 1)
    write_results(records, out)
    try:
        plot(records, out)
        plots = PLOT_FILES
    except ImportError:  # matplotlib comes with the [experiments] extra
        print("no plots: matplotlib is not installed (pip install 'torchmali[experiments]')")
        plots = ()
    checks = targets(records)
    notes = sorted(
        {
            f"{r['library']} {r['gradient']}: {r['note']}"
            for r in records
            if r["status"] == "skipped"
        }
    )
    errors = [r for r in records if r["status"] == "error"]
    summary = "\n\n".join(
        [
            f"# torchmali bench\n\n`{meta['command']}` on {meta['cpu']} ({meta['device']}, "
            f"{meta['torch_threads']} threads), {meta['date']}, {meta['duration_s']} s.",
            "## Targets\n\n" + targets_table(checks),
            "## torchmali / peer ratios (same run)\n\n" + ratios(records),
            "## Dissipative workloads\n\n"
            + (dissipative_tables(records, _dissipative()) or "none run"),
            "## All configurations\n\n" + summary_tables(records),
            "## Skipped\n\n" + ("\n".join(f"- {n}" for n in notes) or "none"),
        ]
    )
    (out / "summary.md").write_text(summary + "\n")
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(summary_tables(records, largest_only=True))
    dissipative = dissipative_tables(records, _dissipative())
    if dissipative:
        print("\n" + dissipative)
    print("\n" + targets_table(checks))
    if notes:
        print("\nskipped: " + "; ".join(notes))
    print(
        f"\n{len(records) - len(skipped) - len(errors)} configurations measured, "
        f"{len(skipped)} skipped, {len(errors)} failed in {meta['duration_s']} s; "
        f"results in {out} ({', '.join(('results.json', 'results.csv', *plots))}, "
        "summary.md)"
    )
    return 1 if errors else 0
