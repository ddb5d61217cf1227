"""Step callbacks, called as torchdiffeq calls them, once per step of the solve."""

from __future__ import annotations

import warnings

import pytest
import torch

import torchmali
from torchmali.gradients import REGISTRY

DT = torch.float64
GRADIENTS = sorted({cls.name for cls in REGISTRY.values()})


class Logged(torch.nn.Module):
    """A field whose callbacks record ``(kind, t0, dt, y0)``."""

    def __init__(self, names=("step", "accept_step", "reject_step"), adjoint=False) -> None:
        super().__init__()
        self.W = torch.nn.Parameter(torch.tensor([[-0.5, 1.0], [-1.0, -0.2]], dtype=DT))
        self.log: list[tuple] = []
        for name in names:
            suffix = "_adjoint" if adjoint else ""
            setattr(self, f"callback_{name}{suffix}", self._recorder(name))

    def _recorder(self, kind):
        def record(t0, y0, dt):
            self.log.append((kind, t0, dt, y0))

        return record

    def forward(self, t, y):
        return torch.tanh(y @ self.W.T) * (1 + 0.1 * t)

    def kinds(self, kind):
        return [entry for entry in self.log if entry[0] == kind]


def _plain(log):
    return [(k, float(t0), float(dt), y0.detach().clone()) for k, t0, dt, y0 in log]


@pytest.mark.parametrize("direction", [1.0, -1.0])
@pytest.mark.parametrize("options", [None, {"step_size": 0.15}], ids=["grid_of_t", "step_size"])
def test_fixed_grid_calls_match_torchdiffeq(direction, options):
    tde = pytest.importorskip("torchdiffeq")
    t = torch.tensor([0.0, 0.3, 0.5, 1.0], dtype=DT) * direction
    y0 = torch.tensor([1.0, 0.5], dtype=DT)
    logs = []
    for odeint in (torchmali.odeint, tde.odeint):
        f = Logged(names=("step",))
        with torch.no_grad():
            odeint(f, y0, t, method="euler", options=options)
        logs.append(_plain(f.log))
    assert len(logs[0]) == len(logs[1]) > 0
    for ours, theirs in zip(*logs, strict=True):
        assert ours[0] == theirs[0]
        assert ours[1] == pytest.approx(theirs[1], abs=1e-15)  # user time
        assert ours[2] == pytest.approx(theirs[2], abs=1e-15) and ours[2] > 0  # dt > 0
        assert torch.allclose(ours[3], theirs[3], atol=1e-15, rtol=0)


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_adaptive_calls(direction):
    """callback_step before every trial step, accept/reject after; user time, dt > 0, the state
    in the user's structure, t0 and dt as float64 0-dim tensors."""
    t = torch.tensor([0.0, 2.0], dtype=DT) * direction

    class TupleLogged(Logged):
        def forward(self, t, y):
            a, b = y
            return -a * 3 + b, torch.sin(10 * t) * a

    f = TupleLogged()
    y0 = (torch.tensor(1.0, dtype=DT), torch.tensor(0.0, dtype=DT))
    with torch.no_grad():
        sol = torchmali.solve(f, y0, t, rtol=1e-6, atol=1e-9, options={"first_step": 0.5})
    accepts, rejects, steps = f.kinds("accept_step"), f.kinds("reject_step"), f.kinds("step")
    assert len(accepts) == sol.stats.n_accepted and len(rejects) == sol.stats.n_rejected > 0
    assert len(steps) == len(accepts) + len(rejects)
    assert [float(e[1]) for e in accepts] == pytest.approx(sol.ts[:-1].tolist(), abs=1e-15)
    for _, t0, dt, y in f.log:
        assert t0.dtype == dt.dtype == torch.float64 and t0.dim() == dt.dim() == 0
        assert float(dt) > 0
        assert isinstance(y, tuple) and [v.shape for v in y] == [(), ()]


def test_unsupported_callbacks_warn_as_torchdiffeq_does():
    f = Logged()
    with pytest.warns(UserWarning, match="does not support callbacks"):
        torchmali.odeint(f, torch.ones(2, dtype=DT), [0.0, 1.0], method="rk4")
    assert f.kinds("step") and not f.kinds("accept_step")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torchmali.odeint(Logged(), torch.ones(2, dtype=DT), [0.0, 1.0], method="dopri5")


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_once_per_step_with_every_gradient_method(gradient):
    """Methods that recompute steps in their backward pass do not call the callbacks again."""
    method, options = ("alf", {"step_size": 0.05}) if gradient == "mali" else ("dopri5", None)
    f = Logged(names=("step", "accept_step", "reject_step") if options is None else ("step",))
    y0 = torch.tensor([1.0, 0.5], dtype=DT, requires_grad=True)
    sol = torchmali.solve(f, y0, [0.0, 1.0], method=method, options=options, gradient=gradient)
    forward = len(f.log)
    sol.ys.sum().backward()
    trials = sol.stats.n_accepted + sol.stats.n_rejected
    # adaptive: callback_step per trial step, then callback_accept_step or _reject_step
    assert len(f.log) == forward == (2 * trials if options is None else trials)


def test_adjoint_callbacks_during_the_backward_solve():
    f = Logged(adjoint=True)
    y0 = torch.tensor([1.0, 0.5], dtype=DT, requires_grad=True)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=DT)
    ys = torchmali.odeint_adjoint(f, y0, t, rtol=1e-6, atol=1e-8)
    assert f.log == []  # forward: only the plain callbacks (none here)
    ys.sum().backward()
    steps = f.kinds("step")
    assert steps and len(f.kinds("accept_step")) + len(f.kinds("reject_step")) == len(steps)
    for _, t0, dt, aug in f.log:
        assert 0.0 <= float(t0) <= 1.0 and float(dt) > 0
        y, adj_y, adj_w = aug  # (y, adj_y, *adj_params)
        assert y.shape == adj_y.shape == (2,) and adj_w.shape == f.W.shape
    # the backward solve runs from t = 1 to t = 0
    assert float(steps[0][1]) == 1.0 and float(f.kinds("accept_step")[-1][1]) < 0.4


def test_adjoint_callback_count_matches_torchdiffeq_on_a_fixed_grid():
    tde = pytest.importorskip("torchdiffeq")
    counts = []
    for odeint_adjoint in (torchmali.odeint_adjoint, tde.odeint_adjoint):
        f = Logged(names=("step",), adjoint=True)
        y0 = torch.tensor([1.0, 0.5], dtype=DT, requires_grad=True)
        ys = odeint_adjoint(
            f, y0, torch.tensor([0.0, 1.0], dtype=DT), method="euler", options={"step_size": 0.1}
        )
        ys.sum().backward()
        counts.append([round(float(e[1]), 12) for e in f.log])
    assert counts[0] == counts[1] and len(counts[0]) == 10
