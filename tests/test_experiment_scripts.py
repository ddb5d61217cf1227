"""The scripts behind docs/experiments.md: the run plan, the tables, the gradient comparison."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from torchmali.cli import build_parser, main
from torchmali.experiments.train import resolve

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def script(name: str):
    """Import ``benchmarks/NAME.py`` (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_every_planned_run_is_a_valid_command() -> None:
    runs = script("run_experiments").planned_runs()
    assert len(runs) > 50 and len(set(runs)) == len(runs)
    for name, args in runs.items():
        parsed = resolve(build_parser().parse_args(["train", *args]))
        assert parsed.task == name.split("-")[0].split("_")[0].replace("membrane", "timeseries")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """Four tiny density runs: two gradient methods, two seeds each, with checkpoints."""
    root = tmp_path_factory.mktemp("results")
    for gradient in ("adjoint", "mali"):
        for seed in (0, 1):
            argv = ["train", "density", "--quick", "--limit", "300", "--epochs", "1"]
            argv += ["--gradient", gradient, "--seed", str(seed), "--threads", "1", "--quiet"]
            argv += ["--no-plots", "--out", str(root / f"density-{gradient}-seed{seed}")]
            assert main(argv) == 0
    return root


def test_tables_summarise_seeds_and_pair_mali_with_the_adjoint(results: Path, capsys) -> None:
    assert script("experiments_table").main(["experiments_table.py", str(results)]) == 0
    out = capsys.readouterr().out
    assert "### density: 8gaussians" in out
    rows = [line for line in out.splitlines() if re.match(r"\| density-\w+-seed\d \|", line)]
    assert len(rows) == 4 and all("`mali`" in r or "`adjoint`" in r for r in rows)
    assert "| density-mali-seedS | 0, 1 |" in out
    assert "density: mali vs adjoint, paired by seed: mali better on" in out
    assert "of 2 seeds" in out and "Wilcoxon signed-rank p = " in out


def test_gradient_agreement_matches_exact_methods_to_round_off(results: Path, capsys) -> None:
    agreement = script("gradient_agreement")
    r = agreement.agreement(results / "density-mali-seed0" / "checkpoint.pt", batches=1, k=2)
    assert r["epoch"] == 1 and r["trained_with"] == "mali"
    methods = r["methods"]
    assert set(methods) == {"adjoint", "checkpoint", "binomial", "mali", "mali K=2"}
    for exact in ("checkpoint", "binomial", "mali", "mali K=2"):
        assert methods[exact]["rel_error_max"] < 1e-4, exact
        assert methods[exact]["cosine_min"] > 0.9999, exact
    # the adjoint solves the continuous adjoint equations: close, but not to round-off
    assert 1e-6 < methods["adjoint"]["rel_error_max"] < 0.5
    assert r["drift_max"] < 1e-4 and r["parasitic_max"] is not None
