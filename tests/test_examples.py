"""The examples run as a user runs them (a subprocess, the repository's interpreter) and print
what their docstrings promise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_quickstart_trains():
    out = run("quickstart.py", "--iterations", "3")
    losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", out)]
    assert len(losses) == 2 and losses[-1] < losses[0]


def test_from_torchdiffeq_matches_torchdiffeq_and_the_closed_form():
    pytest.importorskip("torchdiffeq")
    out = run("from_torchdiffeq.py")
    diffs = [float(x) for x in re.findall(r"\|diff\| (\S+)", out)]
    assert len(diffs) == 2 and diffs[0] < 1e-12 and diffs[1] < 1e-7  # rk4 grid; dopri5 tolerance
    adjoint = re.findall(r"dL/dW\[0,0\] = (\S+)", out)
    assert len(adjoint) == 2 and abs(float(adjoint[0]) - float(adjoint[1])) < 1e-9
    bounce = re.search(r"t = (\S+) \(exact (\S+)\), d t / d x0 = (\S+) \(exact (\S+)\)", out)
    t, t_exact, g, g_exact = map(float, bounce.groups())
    assert abs(t - t_exact) < 1e-9 and abs(g - g_exact) < 1e-8
    assert "without params= is refused" in out
    rel = [float(x) for x in re.findall(r"relative difference from direct (\S+),", out)]
    assert len(rel) == 2 and max(rel) < 1e-12
