"""The symplectic adjoint: exact (equal to direct backprop) for every explicit RK solver, with the
graph of one evaluation of ``func`` alive at a time.

The per-step VJP is tested on its own against autograd through ``solver.step`` (y1, the FSAL
state and dense outputs), then the whole method against ``gradient="direct"``, gradcheck and a
subprocess peak-RSS measurement.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import torchmali
from torchmali._loop import Problem
from torchmali._options import Options
from torchmali._tree import RHS, Structure
from torchmali.gradients import REGISTRY
from torchmali.gradients.symplectic import Symplectic, symplectic_step_vjp
from torchmali.solvers import RungeKutta

RK = sorted(n for n, c in torchmali.SOLVERS.items() if issubclass(c, RungeKutta))
RK_ADAPTIVE = [n for n in RK if torchmali.SOLVERS[n].adaptive]
NOT_RK = sorted(set(torchmali.SOLVERS) - set(RK))


def max_rel(a, b) -> float:
    return max(float((x - y).norm() / (y.norm() + 1e-300)) for x, y in zip(a, b, strict=True))


class Field(nn.Module):
    """``c * tanh(W y + b + t)`` plus a parameter ``unused`` that the field never reads."""

    def __init__(self, dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(dim, dim, dtype=dtype) / dim**0.5)
        self.b = nn.Parameter(torch.randn(dim, dtype=dtype))
        self.c = nn.Parameter(torch.rand(dim, dtype=dtype) + 0.5)
        self.unused = nn.Parameter(torch.randn(2, dtype=dtype))

    def forward(self, t, y):
        return self.c * torch.tanh(y @ self.W.T + self.b + t)


def test_registered_and_parametrised_over_the_solver_registry():
    assert REGISTRY["symplectic"] is Symplectic
    assert "dopri5" in RK and "rk4" in RK and "alf" in NOT_RK


# ---------------------------------------------------------------- the per-step VJP on its own


def _step_cases():
    for name in RK:
        for with_state in (False, True):
            for outputs in ("y1", "end", "dense"):
                if outputs == "dense" and not torch_dense(name):
                    continue
                yield name, with_state, outputs


def torch_dense(name: str) -> bool:
    return torchmali.SOLVERS[name].dense_output


@pytest.mark.parametrize("name,with_state,outputs", list(_step_cases()))
def test_step_vjp_equals_autograd_through_the_step(name, with_state, outputs, f64):
    """Random cotangents of y1, of the FSAL state and of outputs at the end of / inside the step."""
    torch.manual_seed(0)
    solver = torchmali.SOLVERS[name]()
    func = Field(3, f64)
    params = list(func.parameters())
    y0 = torch.randn(4, 3, dtype=f64)
    rhs = RHS(func, Structure.of(y0))
    problem = Problem(f=rhs, solver=solver, options=Options(), tol=None, t_out=[0.3, 0.9])
    t0, h = 0.3, 0.6
    state0 = torch.randn(4, 3, dtype=f64) if with_state else None
    times = {"y1": [], "end": [t0 + h], "dense": [0.45, t0 + h, 0.71]}[outputs]

    with torch.enable_grad():
        y_in = y0.clone().requires_grad_(True)
        s_in = state0.clone().requires_grad_(True) if with_state else None
        res = solver.step(rhs, t0, h, y_in, s_in, with_error=False)
        outs = [res.y1]
        if isinstance(res.state1, torch.Tensor):
            outs.append(res.state1)
        for tk in times:
            outs.append(res.y1 if tk == t0 + h else solver.interpolate(t0, h, y_in, res, tk))
    cots = [torch.randn_like(o) for o in outs]
    inputs = [y_in, *([s_in] if with_state else []), *params]
    ref = torch.autograd.grad(outs, inputs, cots, allow_unused=True)
    ref = [torch.zeros_like(x) if g is None else g for g, x in zip(ref, inputs, strict=True)]

    fsal = isinstance(res.state1, torch.Tensor)
    cot_state1 = cots[1] if fsal else None
    out_cots = list(zip(times, cots[1 + fsal :], strict=True))
    nfe = rhs.nfe
    got_y, got_s, got_p = symplectic_step_vjp(
        problem, t0, h, y0, state0, cots[0], cot_state1, out_cots, params
    )
    got = [got_y, *([got_s] if with_state else []), *got_p]
    assert (got_s is None) == (not with_state)
    assert max_rel(got, ref) <= 1e-12
    assert torch.equal(got_p[-1], torch.zeros_like(func.unused))  # unused: zeros, not None
    s = solver.tableau.stages
    evaluated = s - with_state  # stages not carried in the state
    # the last stage's value is not needed unless a dense output reads it
    no_grad = evaluated if outputs == "dense" else max(evaluated - 1, 0)
    assert rhs.nfe - nfe == no_grad + evaluated


def test_step_vjp_without_cotangent_on_the_fsal_stage_skips_it(f64):
    """At the end of a solve nothing reaches dopri5's FSAL stage (b = 0): it is not evaluated."""
    torch.manual_seed(1)
    solver = torchmali.SOLVERS["dopri5"]()
    func = Field(3, f64)
    y0 = torch.randn(2, 3, dtype=f64)
    rhs = RHS(func, Structure.of(y0))
    problem = Problem(f=rhs, solver=solver, options=Options(), tol=None, t_out=[0.0, 0.5])
    with torch.no_grad():
        state0 = rhs(0.0, y0)
    params = list(func.parameters())
    with torch.enable_grad():
        y_in = y0.clone().requires_grad_(True)
        s_in = state0.clone().requires_grad_(True)
        y1 = solver.step(rhs, 0.0, 0.5, y_in, s_in, with_error=False).y1
    cot = torch.randn_like(y1)
    ref = torch.autograd.grad(y1, [y_in, s_in, *params[:-1]], cot)
    nfe = rhs.nfe
    gy, gs, gp = symplectic_step_vjp(problem, 0.0, 0.5, y0, state0, cot, None, [], params)
    assert max_rel([gy, gs, *gp[:-1]], ref) <= 1e-12
    assert rhs.nfe - nfe == 5 + 5  # stages 2..6 without graph, then with graph; stage 7 never


# ---------------------------------------------------------------- the whole solve vs direct


class MLP(nn.Module):
    def __init__(self, dim: int = 3, hidden: int = 8) -> None:
        super().__init__()
        self.l1 = nn.Linear(dim + 1, hidden)
        self.l2 = nn.Linear(hidden, dim)

    def forward(self, t, y):
        tt = t.expand(*y.shape[:-1], 1)
        return self.l2(torch.tanh(self.l1(torch.cat([y, tt], -1))))


def grads(func, y0, t, method, options, gradient, rtol=1e-5, atol=1e-7):
    sol = torchmali.solve(
        func, y0, t, rtol=rtol, atol=atol, method=method, options=options, gradient=gradient
    )
    ys = (
        sol.ys if isinstance(sol.ys, torch.Tensor) else torch.cat([y.flatten(1) for y in sol.ys], 1)
    )
    w = torch.linspace(-1, 1, ys[0].numel(), dtype=ys.dtype).reshape(ys[0].shape)
    loss = (ys**2).sum() + (ys * w).sum()
    inputs = [*(y0 if isinstance(y0, tuple) else (y0,)), *func.parameters()]
    if t.requires_grad:
        inputs.append(t)
    return sol, torch.autograd.grad(loss, inputs)


SOLVE_CASES = [(m, {"step_size": 0.15}) for m in RK] + [(m, None) for m in RK_ADAPTIVE]


@pytest.mark.parametrize("method,options", SOLVE_CASES)
@pytest.mark.parametrize("times", [[0.0, 1.7], [0.0, 0.3, 1.1, 1.7]])
def test_equals_direct(method, options, times, f64):
    torch.manual_seed(0)
    func = MLP().to(f64)
    y0 = torch.randn(4, 3, dtype=f64, requires_grad=True)
    t = torch.tensor(times, dtype=f64)
    ref_sol, ref = grads(func, y0, t, method, options, "direct")
    sol, got = grads(func, y0, t, method, options, "symplectic")
    assert torch.equal(sol.ts, ref_sol.ts)
    assert torch.equal(sol.ys, ref_sol.ys)
    assert max_rel(got, ref) <= 1e-10
    inside = set(t.tolist()) - set(sol.ts.tolist())
    if not inside:
        assert sol.stats.nfe_backward == expected_nfe_backward(method, sol.stats.n_accepted)


def expected_nfe_backward(method: str, n: int) -> int:
    """Per step: the stages not carried in the state are evaluated once without graph (all but
    the last) and once with graph; the carried last stage of the last step gets no cotangent
    when it has no weight in y1 (dopri5's b_s = 0; torchdiffeq's adaptive_heun and fehlberg2
    carry a weighted stage); the carried initial derivative costs one evaluation with graph (no
    output inside a step assumed)."""
    cls = torchmali.SOLVERS[method]
    s, fsal = cls.tableau.stages, cls.tableau.fsal
    unweighted_last = fsal and cls.tableau.b[-1] == 0.0
    total = 1 if cls.adaptive else 0  # the VJP through state0 = f(t0, y0)
    for i in range(n):
        evaluated = s - (cls.adaptive if i == 0 else fsal)
        total += max(evaluated - 1, 0) + evaluated - (unweighted_last and i == n - 1)
    return total


def test_dense_outputs_inside_steps(f64):
    """dopri5 interpolates outputs inside accepted steps: their VJP goes through the stages."""
    torch.manual_seed(1)
    func = MLP(3, 6).to(f64)
    y0 = torch.randn(2, 3, dtype=f64, requires_grad=True)
    t = torch.linspace(0, 2.0, 13, dtype=f64)
    ref_sol, ref = grads(func, y0, t, "dopri5", None, "direct", rtol=1e-4, atol=1e-6)
    sol, got = grads(func, y0, t, "dopri5", None, "symplectic", rtol=1e-4, atol=1e-6)
    inside = set(t.tolist()) - set(sol.ts.tolist())
    assert len(inside) >= 8 and sol.stats.n_accepted < 8  # most outputs are interpolated
    assert torch.equal(sol.ts, ref_sol.ts)
    assert max_rel(got, ref) <= 1e-10


@pytest.mark.parametrize("method,options", [("dopri5", None), ("rk4", {"step_size": 0.1})])
def test_tuple_state_decreasing_time_and_time_gradients(method, options, f64):
    torch.manual_seed(2)

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 5).to(f64)

        def forward(self, t, y):
            a, b = y
            z = torch.tanh(self.lin(torch.cat([a, b.flatten(1)], 1)) + t)
            return z[:, :1] * a, z[:, 1:].reshape(b.shape) - 0.1 * b

    func = Pair()
    y0 = (
        torch.randn(3, 1, dtype=f64, requires_grad=True),
        torch.randn(3, 2, 2, dtype=f64, requires_grad=True),
    )
    t = torch.tensor([1.0, 0.4, -0.5], dtype=f64, requires_grad=True)
    _, ref = grads(func, y0, t, method, options, "direct")
    _, got = grads(func, y0, t, method, options, "symplectic")
    assert max_rel(got, ref) <= 1e-10
    assert float(got[-1].abs().min()) > 0  # every time gets a gradient


@pytest.mark.parametrize("method", RK)
def test_gradcheck(method, f64):
    """Fixed grid (an adaptive grid moves under the finite-difference perturbation)."""
    torch.manual_seed(3)
    w = torch.randn(2, 2, dtype=f64, requires_grad=True)
    b = torch.randn(2, dtype=f64, requires_grad=True)
    y0 = torch.randn(2, 2, dtype=f64, requires_grad=True)
    t = torch.tensor([0.0, 0.35, 0.6], dtype=f64)

    def fn(y0, w, b):
        f = lambda t, y: torch.tanh(y @ w.T + b)  # noqa: E731
        return torchmali.odeint(
            f, y0, t, method=method, options={"step_size": 0.2}, gradient="symplectic",
            params=[w, b],
        )  # fmt: skip

    assert torch.autograd.gradcheck(fn, (y0, w, b), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_batchnorm_buffers_and_dropout_masks_match_direct(f64):
    class Stateful(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(4, 16)
            self.bn = nn.BatchNorm1d(16)
            self.drop = nn.Dropout(0.3)
            self.l2 = nn.Linear(16, 4)

        def forward(self, t, y):
            return self.l2(self.drop(torch.tanh(self.bn(self.l1(y)))))

    torch.manual_seed(5)
    base = Stateful().to(f64)
    y0 = torch.randn(8, 4, dtype=f64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=f64)
    results = {}
    for g in ("direct", "symplectic"):
        func = Stateful().to(f64)
        func.load_state_dict(base.state_dict())
        torch.manual_seed(123)
        ys = torchmali.odeint(func, y0, t, method="rk4", options={"step_size": 0.1}, gradient=g)
        params = [p for n, p in func.named_parameters() if n != "l1.bias"]  # exactly 0 via BN
        gr = torch.autograd.grad((ys**2).sum(), [y0, *params])
        results[g] = (ys.detach(), gr, [b.clone() for b in func.buffers()], torch.rand(3))
    (ys_d, g_d, buf_d, rng_d), (ys_s, g_s, buf_s, rng_s) = results.values()
    assert torch.equal(ys_d, ys_s)
    assert max_rel(g_s, g_d) <= 1e-10
    for a, b in zip(buf_d, buf_s, strict=True):
        assert torch.equal(a, b)  # the backward pass's evaluations leave the buffers alone
    assert torch.equal(rng_d, rng_s)


@pytest.mark.parametrize("method", NOT_RK)
def test_refuses_solvers_without_a_tableau(method):
    opts = None if torchmali.SOLVERS[method].adaptive else {"step_size": 0.1}
    with pytest.raises(ValueError, match="explicit Runge–Kutta.*'checkpoint' or 'binomial'"):
        torchmali.odeint(
            lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]), method=method,
            options=opts, gradient="symplectic",
        )  # fmt: skip


def test_double_backward_is_refused(f64):
    y0 = torch.ones(2, dtype=f64, requires_grad=True)
    ys = torchmali.odeint(
        lambda t, y: -y, y0, torch.tensor([0.0, 1.0], dtype=f64), method="rk4",
        options={"step_size": 0.1}, gradient="symplectic",
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(ys.sum(), y0, create_graph=True)


def test_reported_memory_is_checkpointing_plus_the_stage_buffers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 8))
    y0 = torch.randn(16, 8, requires_grad=True)
    mem = {}
    for g in ("checkpoint", "symplectic"):
        for n in (10, 100):
            sol = torchmali.solve(
                lambda t, y: net(y), y0, torch.tensor([0.0, 1.0]), method="dopri5",
                options={"step_size": 1 / n}, gradient=g, params=list(net.parameters()),
            )  # fmt: skip
            mem[g, n] = sol.stats.memory_bytes
    stages = torchmali.SOLVERS["dopri5"].tableau.stages
    for n in (10, 100):
        assert mem["symplectic", n] - mem["checkpoint", n] == 2 * stages * y0.nbytes
    assert mem["symplectic", 100] - mem["symplectic", 10] >= 90 * 2 * y0.nbytes  # (y, k_1) / step


# ---------------------------------------------------------------- peak memory (subprocess)

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch, torchmali
    from torchmali.gradients._memory import SavedTensorBytes
    torch.set_num_threads(1)
    gradient, n_steps = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    B, D, H = 256, 16, 8192  # hidden activations: B * H = 2.1e6 floats (8 MiB) each

    class Wide(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = torch.nn.Linear(D, H)
            self.scale = torch.nn.Parameter(torch.rand(2, H) + 0.5)
            self.out = torch.nn.Linear(H, D)

        def forward(self, t, y):
            h = torch.tanh(self.inp(y))
            for s in self.scale:
                h = torch.tanh(h * s)
            return self.out(h)

    net = Wide()
    y0 = torch.randn(B, D, requires_grad=True)
    t = torch.tensor([0.0, 1.0])
    with SavedTensorBytes() as saved:  # the activations one evaluation keeps for its VJP
        net(t[0], y0)
    def run(n):
        ys = torchmali.odeint(net, y0, t, method="dopri5", options={"step_size": 1.0 / n},
                              gradient=gradient)
        ys[-1].square().sum().backward()
    run(1)  # warm-up: lazy initialisation
    def rss_kb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    before = rss_kb()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak-RSS high-water mark (VmHWM)
    run(n_steps)
    peak = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
    print(json.dumps({"peak": (peak - before) * 1024, "one_eval": saved.nbytes}))
    """
)


def peak_rss(gradient: str, n_steps: int) -> tuple[int, int]:
    """Peak RSS above the pre-solve baseline of forward + backward, and one evaluation's saved
    activations. Large allocations are mmapped at a fixed threshold so that freed memory goes
    back to the system at once (glibc's dynamic threshold would keep it in the heap and hide the
    difference between methods)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, gradient, str(n_steps)],
        capture_output=True, text=True, check=True, timeout=300, env=env,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["peak"], result["one_eval"]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_rss_is_one_evaluation_not_one_step():
    """dopri5 (6 evaluations with graph per step): direct keeps every step's activations,
    checkpoint one step's (6 evaluations), symplectic one evaluation's, whatever the step count."""
    direct, one_eval = peak_rss("direct", 2)
    checkpoint, _ = peak_rss("checkpoint", 4)
    sym = {n: peak_rss("symplectic", n)[0] for n in (2, 6)}
    assert direct > 0.9 * 2 * 6 * one_eval  # all 12 evaluations' activations
    assert checkpoint > 0.9 * 6 * one_eval  # one step's 6 evaluations at once
    assert sym[6] < 2.5 * one_eval  # one evaluation + its VJP's temporaries
    assert sym[6] < 0.5 * checkpoint
    assert abs(sym[6] - sym[2]) < 0.25 * one_eval  # independent of the number of steps


# ---------------------------------------------------------------- with binomial checkpointing


@pytest.mark.parametrize(
    "method,options",
    [("rk4", {"step_size": 0.1}), ("dopri5", {"step_size": 0.1}), ("dopri5", None),
     ("tsit5", None), ("bosh3", None)],
)  # fmt: skip
@pytest.mark.parametrize("k", [1, 3])
def test_binomial_storage_equals_direct(method, options, k, f64):
    """``Symplectic(checkpoints=K)``: binomial's schedule, stage-wise step VJPs."""
    from torchmali.gradients.binomial import optimal_recomputations

    torch.manual_seed(6)
    func = MLP(3, 6).to(f64)
    y0 = torch.randn(2, 3, dtype=f64, requires_grad=True)
    t = torch.tensor([0.0, 0.45, 1.2, 2.0], dtype=f64)
    ref_sol, ref = grads(func, y0, t, method, options, "direct")
    sol, got = grads(func, y0, t, method, options, Symplectic(checkpoints=k))
    assert torch.equal(sol.ts, ref_sol.ts)
    assert max_rel(got, ref) <= 1e-10
    n = sol.stats.n_accepted
    if options is not None:
        assert sol.stats.recomputed_steps == optimal_recomputations(n, k)
    bino, _ = grads(func, y0, t, method, options, torchmali.Binomial(checkpoints=k))
    stages = torchmali.SOLVERS[method].tableau.stages
    assert sol.stats.memory_bytes == bino.stats.memory_bytes + 2 * stages * y0.nbytes
    assert sol.stats.recomputed_steps == bino.stats.recomputed_steps


@pytest.mark.parametrize("k", [0, -2, 1.5, True, "4", [2]])
def test_checkpoints_must_be_a_positive_integer(k):
    """The same rule and message as every gradient configuration (``Binomial(checkpoints=)``):
    an integer >= 1 (an integral float such as 4.0 is taken as 4)."""
    with pytest.raises((TypeError, ValueError), match="checkpoints must be an integer >= 1"):
        Symplectic(checkpoints=k)
    assert Symplectic(checkpoints=4.0).checkpoints == 4
