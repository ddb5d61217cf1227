"""Run every training run behind docs/experiments.md, a few at a time, resumably.

Usage::

    python benchmarks/run_experiments.py [--out results/train] [--jobs 2] [--only REGEX]
                                          [--dry-run]
    python benchmarks/experiments_table.py results/train      # the tables of the page

Each run is ``torchmali train ... --threads 1 --quiet --resume --out OUT/NAME`` in its own
process, with its output in ``OUT/NAME/log.txt``. A run whose ``metrics.json`` says it is
complete is skipped and an interrupted one resumes from its last checkpoint, so a killed sweep
continues where it stopped. ``--jobs`` processes run at once (one thread each): on the 2-core
machine of the page, ``--jobs 2`` keeps wall-clock time close to CPU time.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from torchmali.experiments.train import GRADIENTS  # the registry's names()

# The methods compared over several seeds (binomial computes checkpoint's gradient exactly).
SEEDED = ("direct", "adjoint", "checkpoint", "mali")
TOYS = ("pinwheel", "checkerboard", "2spirals", "moons")


def planned_runs() -> dict[str, list[str]]:
    """Run name -> ``torchmali train`` arguments, in the order they are started."""
    runs: dict[str, list[str]] = {}
    for g in GRADIENTS:
        runs[f"image-{g}"] = ["image", "--gradient", g]
        runs[f"density-{g}"] = ["density", "--gradient", g]
        runs[f"density_digits-{g}"] = ["density", "--dataset", "digits", "--gradient", g]
    for seed in range(10):
        for g in GRADIENTS if seed == 0 else SEEDED:
            runs[f"timeseries-{g}-seed{seed}"] = [
                "timeseries",
                "--gradient",
                g,
                "--seed",
                str(seed),
            ]
    for seed in range(5):
        for g in GRADIENTS if seed == 0 else SEEDED:
            runs[f"membrane-{g}-seed{seed}"] = [
                "timeseries", "--dataset", "membrane", "--gradient", g, "--seed", str(seed)
            ]  # fmt: skip
        # MALI restarting its reconstruction every 10 of the 50 steps (bounded drift)
        runs[f"membrane-mali_k10-seed{seed}"] = [
            "timeseries", "--dataset", "membrane", "--gradient", "mali",
            "--mali-checkpoint-every", "10", "--seed", str(seed),
        ]  # fmt: skip
    for g in ("adjoint", "checkpoint"):  # an adaptive solver whose solution tracks the ODE
        runs[f"membrane_dopri5-{g}-seed0"] = [
            "timeseries", "--dataset", "membrane", "--gradient", g, "--method", "dopri5",
            "--step-size", "0", "--seed", "0",
        ]  # fmt: skip
    for toy in TOYS:
        runs[f"density_{toy}-mali"] = ["density", "--dataset", toy, "--gradient", "mali"]
    # checkerboard: finer steps, or a wider flow (whose density no longer integrates to 1)
    runs["density_checkerboard_h005-mali"] = [
        "density", "--dataset", "checkerboard", "--step-size", "0.05", "--gradient", "mali"
    ]  # fmt: skip
    runs["density_checkerboard_wide-mali"] = [
        "density", "--dataset", "checkerboard", "--hidden", "128", "--epochs", "300",
        "--gradient", "mali",
    ]  # fmt: skip
    # two spirals with the 8 steps of the other toys (its default is 20), and wider
    runs["density_2spirals_h0125-mali"] = [
        "density", "--dataset", "2spirals", "--step-size", "0.125", "--gradient", "mali"
    ]  # fmt: skip
    runs["density_2spirals_wide-mali"] = [
        "density", "--dataset", "2spirals", "--step-size", "0.125", "--hidden", "128",
        "--epochs", "300", "--gradient", "mali",
    ]  # fmt: skip
    return runs


def is_complete(out: Path) -> bool:
    try:
        return bool(json.loads((out / "metrics.json").read_text())["complete"])
    except (OSError, ValueError, KeyError):
        return False


def run_one(args: list[str], out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torchmali", "train", *args]
    cmd += ["--threads", "1", "--quiet", "--resume", "--out", str(out)]
    with (out / "log.txt").open("a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("results/train"))
    p.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    p.add_argument("--only", default=None, help="run only the names matching this regex")
    p.add_argument("--dry-run", action="store_true", help="list the runs left to do")
    a = p.parse_args(argv)
    runs = {
        name: args
        for name, args in planned_runs().items()
        if (a.only is None or re.search(a.only, name)) and not is_complete(a.out / name)
    }
    if a.dry_run or not runs:
        for name, args in runs.items():
            print(f"{name}: torchmali train {' '.join(args)}")
        print(f"{len(runs)} run(s) left in {a.out}")
        return 0
    failed = []
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        futures = {pool.submit(run_one, args, a.out / name): name for name, args in runs.items()}
        for fut in tqdm(as_completed(futures), total=len(futures), desc="runs"):
            if fut.result() != 0:
                failed.append(futures[fut])
                tqdm.write(f"{futures[fut]} failed: see {a.out / futures[fut] / 'log.txt'}")
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(
        f"all {len(runs)} run(s) complete; tables: python benchmarks/experiments_table.py {a.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
