"""The ``torchmali bench`` machinery: plan and option parsing, adapters, one tiny run end to end.

The full sweep is not part of the test suite (it is ``bash scripts/bench.sh``).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math

import pytest
import torch

from torchmali.cli import build_parser, main
from torchmali.experiments.bench import build_plan
from torchmali.experiments.bench.measure import measure
from torchmali.experiments.bench.plan import Case, parse_floats, parse_ints, parse_names
from torchmali.experiments.bench.plots import PLOT_FILES
from torchmali.experiments.bench.report import RECORD_KEYS, targets
from torchmali.experiments.bench.timing import group_key, time_group
from torchmali.experiments.bench.workloads import WORKLOADS, build_problem
from torchmali.gradients import names

REQUIRED = (
    "library",
    "gradient",
    "method",
    "workload",
    "n_steps",
    "rtol",
    "time_s",
    "peak_memory_bytes",
    "nfe_forward",
    "nfe_backward",
    "grad_rel_error_discrete",
    "grad_rel_error_continuous",
)
has_tde = importlib.util.find_spec("torchdiffeq") is not None
has_tdep = importlib.util.find_spec("TorchDiffEqPack") is not None


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["bench", *argv])


def test_parsers_reject_bad_values():
    assert parse_names("mlp, conv,mlp", tuple(WORKLOADS), "workloads") == ("mlp", "conv")
    assert parse_ints("100,10,10", "--steps") == (10, 100)
    assert parse_floats("1e-3,1e-5", "--rtols") == (1e-3, 1e-5)
    with pytest.raises(ValueError, match="valid workloads: mlp"):
        parse_names("mlp,nope", tuple(WORKLOADS), "workloads")
    with pytest.raises(ValueError, match="positive integers"):
        parse_ints("10,0", "--steps")
    with pytest.raises(ValueError, match="positive integers"):
        parse_ints("ten", "--steps")
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        parse_floats("2", "--rtols")
    with pytest.raises(ValueError, match="exactly one of n_steps"):
        Case("torchmali", "direct", "alf", "mlp")


def test_plan_defaults_and_overrides():
    cases, skipped = build_plan(_args())
    gradients = {c.gradient for c in cases + [c for c, _ in skipped] if c.library == "torchmali"}
    assert gradients == set(names())
    assert {c.workload for c in cases} == {"mlp", "mlp-times", "conv"}
    assert {c.n_steps for c in cases if c.mode == "fixed"} == {10, 100, 1000}
    assert {c.mode for c in cases} == {"fixed", "adaptive"}
    assert {c.dtype for c in cases} == {"float32", "float64"}
    assert all(c.method == "alf" for c in cases if c.gradient == "mali")
    assert len(set(cases)) == len(cases)

    quick, _ = build_plan(_args("--quick"))
    assert len(quick) < len(cases)

    small, _ = build_plan(
        _args("--workloads", "conv", "--steps", "5", "--no-adaptive", "--libraries", "torchmali")
    )
    assert small and all(c.workload == "conv" and c.n_steps == 5 for c in small)
    assert all(c.library == "torchmali" for c in small)


def test_plan_skips_with_a_note():
    cases, skipped = build_plan(_args("--workloads", "mlp-times", "--libraries", "torchdiffeqpack"))
    assert not cases and skipped
    assert all(("end state only" in note or "not installed" in note) for _, note in skipped)


def test_plan_rejects_bad_options():
    with pytest.raises(ValueError, match="valid gradients"):
        build_plan(_args("--gradients", "exact"))
    with pytest.raises(ValueError, match="--device"):
        build_plan(_args("--device", "tpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            build_plan(_args("--device", "cuda"))
    assert main(["bench", "--libraries", "numpy", "--dry-run"]) == 2


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_workloads_are_deterministic(name):
    a = build_problem(WORKLOADS[name], torch.float32, "cpu", seed=3)
    b = build_problem(WORKLOADS[name], torch.float64, "cpu", seed=3)
    for p, q in zip(a.func.parameters(), b.func.parameters(), strict=True):
        assert torch.equal(p.double(), q)
    assert torch.equal(a.y0.double(), b.y0)
    out = a.func(0.5, a.y0)
    assert out.shape == a.y0.shape
    ys = torch.stack([a.y0] * len(a.t))
    assert torch.isfinite(a.loss(ys))


@pytest.fixture(autouse=True)
def one_thread():
    """Small problems: one intra-op thread is faster, and immune to oversubscribed cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    """One cache of reference gradients for the module's direct calls of ``measure``."""
    return tmp_path_factory.mktemp("refs")


def _check(record, max_error):
    assert record["status"] == "ok", record.get("note")
    assert record["peak_memory_bytes"] >= 0
    assert record["nfe_forward"] > 0 and record["nfe_backward"] >= 0
    assert record["grad_rel_error_discrete"] < max_error
    assert record["grad_rel_error_continuous"] < 1e-1


@pytest.mark.parametrize(
    "library, gradient, method",
    [
        ("torchmali", "mali", "alf"),
        pytest.param(
            "torchdiffeqpack", "mali", "alf", marks=pytest.mark.skipif(not has_tdep, reason="peer")
        ),
        pytest.param(
            "torchdiffeqpack",
            "checkpoint",
            "euler",
            marks=pytest.mark.skipif(not has_tdep, reason="peer"),
        ),
        pytest.param(
            "torchdiffeq", "adjoint", "euler", marks=pytest.mark.skipif(not has_tde, reason="peer")
        ),
    ],
)
def test_adapters_agree_with_the_reference(refs, library, gradient, method):
    """Every adapter runs the same discrete problem: its gradient matches torchmali's float64
    direct backprop on the same grid (up to float32 round-off; the adjoint is not exact)."""
    case = Case(library, gradient, method, "mlp", n_steps=8, repeats=1)
    record = measure(case, refs)
    assert record["n_steps"] == 8
    _check(record, 1e-1 if gradient == "adjoint" else 1e-5)


def test_adaptive_grid_is_replayed(tmp_path):
    record = measure(
        Case("torchmali", "checkpoint", "dopri5", "mlp", rtol=1e-3, atol=1e-3), tmp_path
    )
    _check(record, 1e-5)
    assert record["n_steps"] >= 1 and record["mode"] == "adaptive"


def test_time_group_round_robin():
    group = [Case("torchmali", g, "alf", "mlp", n_steps=4, repeats=2) for g in ("direct", "mali")]
    assert group_key(group[0]) == group_key(group[1])
    timed = time_group(group)
    assert len(timed) == 2
    for t in timed:
        assert t["time_s"] > 0 and t["cpu_time_s"] > 0
        assert len(t["time_s_repeats"]) >= 2  # short calls are repeated up to 5 x repeats


def test_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--workloads", "mlp", "--steps", "4,8", "--libraries", "torchmali"]
    argv += ["--gradients", "direct,mali", "--rtols", "1e-2", "--repeats", "1", "--out", str(out)]
    assert main(argv) == 0

    records = json.loads((out / "results.json").read_text())
    assert isinstance(records, list) and records
    for rec in records:
        assert set(REQUIRED) <= set(rec) and set(rec) >= set(RECORD_KEYS)
        assert rec["library"] == "torchmali" and rec["gradient"] in ("direct", "mali")
        assert rec["status"] == "ok", rec["note"]
    fixed = [r for r in records if r["mode"] == "fixed"]
    assert {(r["gradient"], r["n_steps"], r["dtype"]) for r in fixed} >= {
        (g, n, "float32") for g in ("direct", "mali") for n in (4, 8)
    }
    assert all(r["rtol"] == 1e-2 for r in records if r["mode"] == "adaptive")
    assert all(r["memory_method"] for r in records)
    assert all(r["time_s"] > 0 and r["duration_s"] > 0 for r in records)
    for rec in records:
        assert math.isfinite(rec["grad_rel_error_continuous"])
        assert rec["grad_rel_error_discrete"] < (1e-5 if rec["dtype"] == "float32" else 1e-12)

    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(records) and set(REQUIRED) <= set(rows[0])
    for name in PLOT_FILES:
        assert (out / name).stat().st_size > 1000
    assert "## Targets" in (out / "summary.md").read_text()
    assert json.loads((out / "meta.json").read_text())["command"].startswith("torchmali bench")
    printed = capsys.readouterr().out
    assert "| torchmali | mali | alf |" in printed and "configurations measured" in printed


def test_targets_from_records():
    def rec(gradient, n, mem, time_s, library="torchmali", err=0.0):
        return dict(
            library=library,
            gradient=gradient,
            method="alf",
            workload="mlp",
            mode="fixed",
            n_steps=n,
            n_steps_requested=n,
            rtol=None,
            dtype="float32",
            status="ok",
            peak_memory_bytes=mem,
            time_s=time_s,
            grad_rel_error_discrete=err,
            grad_rel_error_direct=err,
            peer_method=None,
        )

    records = [
        rec("mali", 10, 100, 1.0),
        rec("mali", 1000, 105, 120.0),
        rec("direct", 10, 2_000_000 + 10 * 102_400, 1.0),
        rec("direct", 1000, 2_000_000 + 1000 * 102_400, 100.0),
    ]
    rows = {t.split(": ", 1)[-1]: (m, ok) for t, m, ok in targets(records)}
    assert rows["mali memory flat (n=1000 within 10% of n=10)"][1] is True
    assert rows["direct memory grows linearly"][1] is True
    assert "100 KiB per step" in rows["direct memory grows linearly"][0]
    assert rows["mali time <= 1.4x direct"][1] is True
    records[1]["peak_memory_bytes"] = 200
    rows = {t.split(": ", 1)[-1]: ok for t, _, ok in targets(records)}
    assert rows["mali memory flat (n=1000 within 10% of n=10)"] is False


def test_time_ratio_pairs_the_rounds():
    from torchmali.experiments.bench.report import time_ratio

    # Round 2 was slow for both: pairing by round gives 1.5 throughout; medians alone would not.
    mine = {"time_s": 3.0, "time_s_repeats": [1.5, 1.5, 30.0, 1.5, 15.0]}
    ref = {"time_s": 1.0, "time_s_repeats": [1.0, 1.0, 20.0, 1.0, 10.0, 1.0, 1.0]}
    assert time_ratio(mine, ref) == pytest.approx(1.5)
    assert time_ratio({"time_s": 3.0}, {"time_s": 2.0}) == pytest.approx(1.5)  # no repeats
