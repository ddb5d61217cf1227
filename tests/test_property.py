"""Property test: every exact gradient method equals direct backprop on random problems.

For every pair (exact gradient method of ``torchmali.gradients.REGISTRY``, solver of
``torchmali.SOLVERS``), hypothesis draws small float64 problems — state size, batch, a single
tensor or a tuple state, output grids increasing or decreasing, fixed or adaptive steps, time
dependence — and checks the gradients with respect to ``y0``, the parameters and ``t`` against
``gradient="direct"`` to 1e-10. A pair the gradient method refuses (its ``check`` raises
``ValueError``) must be refused by ``odeint`` too. Methods and solvers added to the registries
are picked up with no edit here. Deterministic (``derandomize=True``), a few seconds per pair.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import torchmali
from torchmali.gradients import REGISTRY, resolve

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

F64 = torch.float64
#: one name per solver class (aliases such as fixed_adams/heun2 are the same solver)
SOLVERS = sorted({cls: name for name, cls in sorted(torchmali.SOLVERS.items())[::-1]}.values())
#: exact methods: a class may say so with ``exact``; the backsolve adjoint is not exact
EXACT = sorted(
    {
        cls.name
        for cls in REGISTRY.values()
        if cls.name != "direct" and getattr(cls, "exact", cls.name != "adjoint")
    }
)
EXAMPLES = 8  # per (gradient, solver) pair; the whole module stays well under a minute

SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)


@st.composite
def problems(draw, method: str) -> dict:
    """A random problem: shapes, weights, output grid and step control."""
    adaptive = torchmali.SOLVERS[method].adaptive
    dim = draw(st.integers(1, 3))
    batch = draw(st.sampled_from([(), (1,), (2,)]))
    second = draw(st.sampled_from([None, 1, 2]))  # size of a second tuple member
    n_out = draw(st.integers(2, 4))
    t0 = draw(st.floats(-1.0, 1.0))
    gaps = draw(st.lists(st.floats(0.1, 0.5), min_size=n_out - 1, max_size=n_out - 1))
    sign = draw(st.sampled_from([1.0, -1.0]))
    fixed = not adaptive or draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    times = [t0]
    for gap in gaps:
        times.append(times[-1] + sign * gap)
    control = (
        {"options": {"step_size": draw(st.floats(0.05, 0.3))}}
        if fixed
        else {"rtol": draw(st.sampled_from([1e-3, 1e-4, 1e-5])), "atol": 1e-7}
    )
    return dict(dim=dim, batch=batch, second=second, times=times, fixed=fixed, seed=seed,
                control=control)  # fmt: skip


def _model(p: dict):
    """Parameters, the initial state and ``func`` (time dependent, tuple members coupled)."""
    g = torch.Generator().manual_seed(p["seed"])
    dim, batch, second = p["dim"], p["batch"], p["second"]

    def rand(*shape, scale=0.5):
        return (torch.randn(*shape, generator=g, dtype=F64) * scale).requires_grad_(True)

    W, b, c = rand(dim, dim, scale=0.7 / dim**0.5), rand(dim, scale=0.3), rand(dim, scale=0.3)
    params = [W, b, c]
    y0 = rand(*batch, dim, scale=1.0)
    if second is None:

        def func(t, y):
            return torch.tanh(y @ W.T + b + c * t)

        return params, y0, func
    C = rand(second, dim, scale=0.5)
    params.append(C)
    z0 = rand(*batch, second, scale=1.0)

    def func(t, state):
        y, z = state
        dy = torch.tanh(y @ W.T + b + c * t) - 0.1 * z.sum(-1, keepdim=True)
        return dy, torch.sin(y @ C.T) - 0.2 * z

    return params, (y0, z0), func


def _gradients(p: dict, method: str, gradient: str):
    params, y0, func = _model(p)
    t = torch.tensor(p["times"], dtype=F64, requires_grad=True)
    with warnings.catch_warnings():  # MALI's parasitic-mode warning on dissipative draws
        warnings.simplefilter("ignore", torchmali.ReconstructionDriftWarning)
        ys = torchmali.odeint(func, y0, t, method=method, gradient=gradient, params=params,
                              **p["control"])  # fmt: skip
        ys = ys if isinstance(ys, tuple) else (ys,)
        g = torch.Generator().manual_seed(p["seed"] + 1)
        loss = sum((y * torch.randn(y.shape, generator=g, dtype=F64)).sum() for y in ys)
        inputs = [*(y0 if isinstance(y0, tuple) else (y0,)), *params, t]
        return torch.autograd.grad(loss, inputs)


def _refused(gradient: str, method: str, fixed: bool) -> bool:
    """The method's own ``accepts`` (its ``check``; forward-only solvers have no gradient)."""
    return not resolve(gradient).accepts(torchmali.SOLVERS[method], fixed)


@pytest.mark.parametrize("method", SOLVERS)
@pytest.mark.parametrize("gradient", EXACT)
def test_exact_gradients_equal_direct(gradient: str, method: str) -> None:
    @SETTINGS
    @hypothesis.given(problems(method))
    def check(p: dict) -> None:
        if _refused(gradient, method, p["fixed"]):
            with pytest.raises(ValueError):
                _gradients(p, method, gradient)
            return
        expected = _gradients(p, method, "direct")
        got = _gradients(p, method, gradient)
        names = ["y0", *(["z0"] if p["second"] else []), "W", "b", "c"]
        names += [*(["C"] if p["second"] else []), "t"]
        for name, a, e in zip(names, got, expected, strict=True):
            err = float((a - e).abs().max()) / (float(e.abs().max()) + 1e-300)
            assert err <= 1e-10, f"d loss / d {name}: relative error {err:.3g}"

    check()
