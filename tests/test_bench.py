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

import torchmali
from torchmali.cli import build_parser, main
from torchmali.experiments.bench import build_plan, plan
from torchmali.experiments.bench.measure import measure
from torchmali.experiments.bench.plan import (
    Case,
    gradient_config,
    parse_floats,
    parse_gradients,
    parse_ints,
    parse_names,
)
from torchmali.experiments.bench.plots import PLOT_FILES
from torchmali.experiments.bench.report import RECORD_KEYS
from torchmali.experiments.bench.targets import targets
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
    assert gradients == {*names(), "symplectic[checkpoints=8]"}
    assert {c.workload for c in cases} == {"mlp", "mlp-times", "conv", "decay", "oscillate"}
    assert {c.n_steps for c in cases if c.mode == "fixed"} == {10, 30, 100, 1000}
    assert {c.mode for c in cases} == {"fixed", "adaptive"}
    assert {c.dtype for c in cases} == {"float32", "float64"}
    assert all(torchmali.SOLVERS[c.method].reversible for c in cases if c.gradient == "mali")
    assert all(c.method not in ("alf", "euler") for c in cases if c.gradient == "symplectic")
    assert len(set(cases)) == len(cases)

    quick, _ = build_plan(_args("--quick"))
    assert len(quick) < len(cases)
    assert {c.gradient for c in quick if c.library == "torchmali"} == set(names())

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


@pytest.mark.parametrize("workload, rtol", [("decay", 1e-4), ("mlp-times", 1e-6)])
@pytest.mark.parametrize("gradient", ["direct", "checkpoint"])
def test_adaptive_grid_is_replayed(tmp_path, gradient, workload, rtol):
    """The same-grid references of an adaptive run replay its accepted grid step for step, as the
    adaptive solve stepped it: direct backprop's own gradient equals the float32 one exactly
    (decay, T = 10: a replay that took another grid, one step of the whole interval, was off by
    100%; mlp-times has a time input and outputs inside steps, where a fixed-grid replay's stage
    times and interpolation differ)."""
    case = Case("torchmali", gradient, "dopri5", workload, rtol=rtol, atol=rtol, repeats=1)
    record = measure(case, tmp_path)
    assert record["status"] == "ok", record.get("note")
    assert record["n_steps"] >= 3 and record["mode"] == "adaptive"
    if gradient == "direct":
        assert record["grad_rel_error_direct"] == 0.0
    assert record["grad_rel_error_direct"] < 1e-6
    assert record["grad_rel_error_discrete"] < 1e-5


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
    argv += ["--dtypes", "float32"]
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


def _rec(gradient, n=100, mem=1_000_000, time_s=1.0, **extra):
    """A synthetic ok record of the mlp workload, float32, fixed grid."""
    rec = dict(
        library="torchmali",
        gradient=gradient,
        method="alf",
        workload="mlp",
        mode="fixed",
        n_steps=n,
        n_steps_requested=n,
        rtol=None,
        dtype="float32",
        device="cpu",
        status="ok",
        peak_memory_bytes=mem,
        time_s=time_s,
        grad_rel_error_discrete=0.0,
        grad_rel_error_direct=0.0,
        peer_method=None,
    )
    rec.update(extra)
    return rec


def _rows(records):
    return {t.split(": ", 1)[-1]: (m, ok) for t, m, ok in targets(records)}


def test_memory_targets():
    records = [
        _rec("mali", 10, 100),
        _rec("mali", 1000, 105),
        _rec("direct", 10, 2_000_000 + 10 * 102_400),
        _rec("direct", 1000, 2_000_000 + 1000 * 102_400),
    ]
    rows = _rows(records)
    assert rows["mali memory flat (n=1000 within 10% of n=10)"][1] is True
    assert rows["direct memory grows linearly"][1] is True
    assert "100 KiB per step" in rows["direct memory grows linearly"][0]
    records[1]["peak_memory_bytes"] = 200
    assert _rows(records)["mali memory flat (n=1000 within 10% of n=10)"][1] is False
    records[1]["stats"] = {"checkpoint_interval": 50}  # grows by design: reported, not judged
    measured, ok = _rows(records)["mali memory flat (n=1000 within 10% of n=10)"]
    assert ok is None and "every 50 steps" in measured

    aca = "checkpoint memory <= TorchDiffEqPack ACA (+0.25 MiB floor)"
    mib = 2**20
    for mine, ok in ((1.7 * mib, True), (2.0 * mib, False)):  # peer: 1.6 MiB
        pair = [
            _rec("checkpoint", method="euler", mem=mine),
            _rec("checkpoint", method="euler", mem=1.6 * mib, library="torchdiffeqpack"),
        ]
        assert _rows(pair)[aca][1] is ok


def test_reversible_time_target_uses_the_floor_of_the_same_rounds():
    # Round 2 was slow for all three: per round mali = 1.0 x (direct + forward) throughout.
    fwd = {"forward_time_s": 0.3, "forward_time_s_repeats": [0.3, 0.3, 3.0]}
    mali = _rec("mali", time_s=1.3, time_s_repeats=[1.3, 1.3, 13.0], **fwd)
    direct = _rec("direct", time_s=1.0, time_s_repeats=[1.0, 1.0, 10.0], **fwd)
    name = "mali time <= 1.05x floor (direct + no-grad forward, same rounds)"
    measured, ok = _rows([mali, direct])[name]
    assert ok is True and "1.00x floor, 1.30x direct" in measured
    mali["time_s_repeats"] = [1.5, 1.5, 15.0]  # 1.15x its floor
    assert _rows([mali, direct])[name][1] is False
    del mali["forward_time_s_repeats"], mali["forward_time_s"]  # floor not timed: no verdict
    assert name not in _rows([mali, direct])
    peer = _rec("mali", library="torchdiffeqpack", time_s=3.0, time_s_repeats=[3.0] * 3)
    assert _rows([mali, peer])["mali time <= 0.8x TorchDiffEqPack MALI"][1] is True


def test_symplectic_targets():
    rk = {"method": "rk4"}
    sym = _rec("symplectic", mem=10, time_s=1.7, reported_memory_bytes=30, **rk)
    records = [
        sym,
        _rec("direct", mem=50, time_s=1.0, **rk),
        _rec("checkpoint", mem=20, time_s=1.2, reported_memory_bytes=20, **rk),
    ]
    rows = _rows(records)
    assert rows["symplectic time <= 1.8x direct"][1] is True
    memory = "symplectic peak memory <= checkpoint's (+0.25 MiB floor)"
    assert rows[memory][1] is True  # judged on the measured peak, whatever memory_bytes says
    sym.update(time_s=1.9, peak_memory_bytes=20 + 300 * 1024)
    rows = _rows(records)
    assert rows["symplectic time <= 1.8x direct"][1] is False
    assert rows[memory][1] is False


def test_error_targets_judge_float32_against_its_own_floor():
    def errors(direct64, mine64, mine32, n=1000):
        return [
            _rec("direct", n, grad_rel_error_discrete=direct64),
            _rec("checkpoint", n, grad_rel_error_discrete=mine64, grad_rel_error_direct=mine32),
        ]

    rel = "checkpoint gradient error vs float64 direct, same grid <= max(2e, e + 2^-23), e = "
    rel += "float32 direct's own"
    same = "checkpoint gradient error vs float32 direct, same grid <= 1e-06"
    # 1.4e-6 against float64 at n = 1000 is float32's floor (direct's own): it passes.
    rows = _rows(errors(1.4e-6, 1.4e-6, 0.0))
    assert rows[rel][1] is True and rows[same][1] is True
    assert _rows(errors(1.4e-6, 3.0e-6, 5e-7))[rel][1] is False  # doubles float32's error
    assert _rows(errors(1.4e-6, 1.4e-6, 2e-6))[same][1] is False
    # near round-off, the additive slack decides: e + 2^-23
    assert _rows(errors(1e-8, 1.1e-7, 1e-7, n=10))[rel][1] is True
    assert _rows(errors(1e-8, 2e-7, 1e-7, n=10))[rel][1] is False
    f64 = [_rec("mali", dtype="float64", grad_rel_error_discrete=e) for e in (1e-16, 2e-10)]
    assert _rows(f64)["mali (alf) gradient error vs float64 direct, same grid <= 1e-10"][1] is False


def test_dissipative_targets():
    def rec(gradient, warnings=(), **errs):
        base = dict(
            forward_rel_error_continuous=1e-7,
            grad_rel_error_continuous=3e-7,
            grad_rel_error_direct=4e-7,
        )
        return _rec(gradient, workload="decay", warnings=list(warnings), **{**base, **errs})

    name = "mali faithful, or its failure reported"
    assert _rows([rec("mali")])[name][1] is True
    broken = {"forward_rel_error_continuous": 39.0, "grad_rel_error_continuous": 1e3}
    measured, ok = _rows([rec("mali", **broken)])[name]
    assert ok is False and "nothing reported" in measured  # a silent failure
    warned = rec("mali", ["ReconstructionDriftWarning: drift"], **broken)
    measured, ok = _rows([warned])[name]
    assert ok is True and "ReconstructionDriftWarning" in measured
    assert _rows([rec("mali", grad_rel_error_direct=1e-4)])[name][1] is False
    raised = dict(rec("mali"), status="error", note="RuntimeError: drift")
    assert _rows([raised])[name][1] is True
    assert not _rows([rec("direct")])  # direct and adjoint are not judged here
    assert all("gradient error" not in t for t in _rows([rec("checkpoint", **broken)]))


def test_time_ratio_pairs_the_rounds():
    from torchmali.experiments.bench.report import time_ratio

    # Round 2 was slow for both: pairing by round gives 1.5 throughout; medians alone would not.
    mine = {"time_s": 3.0, "time_s_repeats": [1.5, 1.5, 30.0, 1.5, 15.0]}
    ref = {"time_s": 1.0, "time_s_repeats": [1.0, 1.0, 20.0, 1.0, 10.0, 1.0, 1.0]}
    assert time_ratio(mine, ref) == pytest.approx(1.5)
    assert time_ratio({"time_s": 3.0}, {"time_s": 2.0}) == pytest.approx(1.5)  # no repeats


def test_gradient_specs():
    config = gradient_config("symplectic[checkpoints=8]")
    assert isinstance(config, torchmali.gradients.Symplectic) and config.checkpoints == 8
    assert parse_gradients("aca, symplectic[checkpoints=4],direct") == (
        "checkpoint",
        "symplectic[checkpoints=4]",
        "direct",
    )
    with pytest.raises(ValueError, match="has the options"):
        gradient_config("symplectic[checkpointz=8]")
    with pytest.raises(ValueError, match="valid gradients: direct"):
        parse_gradients("exact")


def test_plan_enumerates_the_registries(monkeypatch, refs):
    """A gradient method and a reversible solver registered later are benchmarked with no change
    to the bench: every section they fit, every adapter, end to end."""
    from dataclasses import dataclass

    from torchmali.gradients import REGISTRY, Checkpoint

    @dataclass(frozen=True)
    class Late(Checkpoint):
        """A checkpoint copy under another name."""

        name = "late_method"

    class LateReversible(torchmali.ALF):
        name = "late_reversible"

    monkeypatch.setitem(REGISTRY, "late_method", Late)
    monkeypatch.setitem(torchmali.SOLVERS, "late_reversible", LateReversible)
    cases, _ = build_plan(_args())
    late = {(c.method, c.workload) for c in cases if c.gradient == "late_method"}
    assert ("rk4", "mlp") in late and ("dopri5", "decay") in late
    reversible = {(c.gradient, c.workload, c.mode) for c in cases if c.method == "late_reversible"}
    assert reversible >= {("mali", "mlp", "fixed"), ("mali", "decay", "fixed")}
    assert ("late_method", "mlp", "fixed") in reversible  # accepts every solver, as checkpoint
    assert not any(c.library != "torchmali" for c in cases if c.method == "late_reversible")
    quick, _ = build_plan(_args("--quick", "--gradients", "late_method,mali"))
    assert {c.gradient for c in quick} == {"late_method", "mali"}
    record = measure(Case("torchmali", "mali", "late_reversible", "mlp", n_steps=4), refs)
    assert record["grad_rel_error_direct"] < 1e-5 and record["vjp_backward"] == 5


def test_counting_field_counts_vjps():
    from torchmali.experiments.bench.measure import CountingField

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 3)

        def forward(self, t, y):
            return self.linear(y)

    field = CountingField(Field())
    x = torch.randn(2, 3, requires_grad=True)
    y = field(0.0, x)
    torch.autograd.grad(y, x, torch.ones_like(y))  # the evaluation is the root
    (field(0.0, x).sin() * field(0.0, x)).sum().backward()  # two evaluations inside a graph
    with torch.no_grad():
        field(0.0, x)
    assert (field.calls, field.vjps) == (4, 3)


@pytest.mark.parametrize(
    "gradient, method, vjps",
    [
        ("direct", "alf", 9),  # one per evaluation, v0's included
        ("mali", "alf", 9),  # one per backward step, plus v0's
        ("checkpoint", "rk4", 32),  # every stage of every step
        ("symplectic", "rk4", 32),
    ],
)
def test_vjp_counts(refs, gradient, method, vjps):
    record = measure(Case("torchmali", gradient, method, "mlp", n_steps=8, repeats=1), refs)
    assert record["vjp_backward"] == vjps


def test_long_horizon_workloads_and_their_reference():
    """decay / oscillate: the closed-form reference is the ODE's (float64 dopri5 at 1e-10 agrees),
    and the workloads do what they claim: ALF is far from it on decay only, rk4 is not."""
    for name in ("decay", "oscillate"):
        workload = WORKLOADS[name]
        problem = build_problem(workload, torch.float64, "cpu", seed=0).subset(8)
        eig = torch.linalg.eigvals(problem.func.linear.weight.detach())
        assert (eig.real.max() < -0.5) if workload.dissipative else eig.real.abs().max() < 1e-12
        exact = problem.func.flow(problem.y0, problem.t)
        problem.loss(exact).backward()
        grad = [p.grad.clone() for p in problem.parameters()]
        for p in problem.parameters():
            p.grad = None
        ys = torchmali.odeint(problem.func, problem.y0, problem.t, rtol=1e-10, atol=1e-12)
        assert torch.allclose(ys, exact, rtol=1e-8, atol=1e-8)
        problem.loss(ys).backward()
        for g, p in zip(grad, problem.parameters(), strict=True):
            assert torch.allclose(p.grad, g, rtol=1e-7, atol=1e-10)
        errors = {}
        for method in ("alf", "rk4"):
            with torch.no_grad():
                y = torchmali.odeint(
                    problem.func, problem.y0, problem.t, method=method,
                    options={"step_size": workload.step_size(100)},
                )  # fmt: skip
            ref = exact[-1].detach()
            errors[method] = float((y[-1] - ref).norm() / ref.norm())
        assert errors["rk4"] < 1e-3
        assert (errors["alf"] > 1.0) if workload.dissipative else errors["alf"] < 0.1


def test_forward_sweep_is_timed_with_reversible_methods():
    group = [Case("torchmali", g, "alf", "decay", n_steps=4, repeats=1) for g in ("direct", "mali")]
    timed = time_group(group)
    assert all(t["forward_time_s"] > 0 and t["forward_time_s_repeats"] for t in timed)
    assert "forward_time_s" not in time_group(group[:1])[0]


def test_quick_suite_evaluates_every_target():
    """Every kind of target is judged from the --quick suite's own runs (synthetic numbers)."""
    from torchmali.experiments.bench.report import make_record

    cases, _ = build_plan(_args("--quick"))
    records = []
    for case in cases:
        n = case.n_steps or 5
        result = dict(
            status="ok",
            n_steps=n,
            peak_memory_bytes=10**6 + (n * 10**4 if case.gradient == "direct" else 0),
            time_s=1.0,
            time_s_repeats=[1.0, 1.0],
            forward_time_s=0.5,
            forward_time_s_repeats=[0.5, 0.5],
            grad_rel_error_discrete=1e-7,
            grad_rel_error_direct=0.0,
            grad_rel_error_continuous=1e-7,
            forward_rel_error_continuous=1e-7,
            warnings=[],
            peer_method="peer" if case.library != "torchmali" else None,
        )
        records.append(make_record(case, result))
    rows = [t for t, _, _ in targets(records)]
    kinds = [
        "mali memory flat",
        "direct memory grows linearly",
        "mali time <= 1.05x floor",
        "mali time <= 0.8x TorchDiffEqPack MALI",
        "symplectic time <= 1.8x direct",
        "symplectic peak memory <= checkpoint's (+0.25 MiB floor)",
        "vs float32 direct, same grid <= 1e-06",
        "vs float64 direct, same grid <= max(2e, e + 2^-23)",
        "vs float64 direct, same grid <= 1e-10",
        "decay alf n=30: mali faithful, or its failure reported",
        "symplectic faithful, or its failure reported",
        "checkpoint memory <= TorchDiffEqPack ACA (+0.25 MiB floor)",
    ]
    if not has_tdep:  # the peer targets need the peer
        kinds = [k for k in kinds if "TorchDiffEqPack" not in k]
    missing = [k for k in kinds if not any(k in row for row in rows)]
    assert not missing, missing
    for solver in plan.reversible_solvers():  # each reversible solver is judged on its own
        assert any(f"mlp {solver} n=30: mali time <= 1.05x floor" in row for row in rows)
