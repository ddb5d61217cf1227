"""``params=``: a memory-efficient gradient never silently leaves out a tensor ``func`` uses.

Every case of issue 11.1 is refused for every memory-efficient method of the registry; the valid
ways to say what to differentiate (``params=``, an ``nn.Module``, nothing trainable, an explicit
``params=()``) pass and give direct backprop's gradients.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import torchmali
from torchmali.gradients import REGISTRY, resolve

MEMORY_EFFICIENT = sorted({cls.name for cls in REGISTRY.values()} - {"direct"})
DIM = 3


def _tol(gradient: str) -> float:
    """Exact methods match direct backprop to round-off; the backsolve adjoint only to its
    discretisation error (a few percent on this coarse grid)."""
    exact = getattr(REGISTRY[gradient], "exact", gradient != "adjoint")
    return 1e-10 if exact else 5e-2


def _solver(gradient: str) -> str:
    """A fixed-grid solver the gradient method accepts (``alf`` when it does)."""
    method = resolve(gradient)
    names = ["alf", *sorted(n for n in torchmali.SOLVERS if n != "alf")]
    for name in names:
        cls = torchmali.SOLVERS[name]
        solver = cls()
        try:
            method.check(solver, True)
        except ValueError:
            continue
        return name
    raise AssertionError(f"no solver accepted by {gradient!r}")


def _solve(func, y0, gradient, t=(0.0, 0.5, 1.0), solver_of=None, **kw):
    """Solve with a fixed-grid solver ``gradient`` accepts (that of ``solver_of``'s if given, so
    a direct reference runs on the same solver as the method it checks)."""
    t = torch.tensor(t, dtype=torch.float64)
    method = _solver(solver_of or gradient)
    return torchmali.odeint(
        func, y0, t, method=method, options={"step_size": 0.1}, gradient=gradient, **kw
    )


def _weight(seed: int = 0, shape=(DIM, DIM)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.5).requires_grad_(True)


# Module-level, as in a script: ``f = lambda t, y: net(y)``.
NET = nn.Sequential(nn.Linear(DIM, 5), nn.Tanh(), nn.Linear(5, DIM)).double()
W_GLOBAL = _weight(1)


class _Holder:
    """A callable object (not a Module) holding its weight."""

    def __init__(self, w: torch.Tensor) -> None:
        self.w = w

    def __call__(self, t, y):
        return torch.tanh(y @ self.w)


class _UsesGlobal(nn.Module):
    """An nn.Module whose forward uses a tensor that is not one of its parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(DIM, DIM).double()

    def forward(self, t, y):
        return torch.tanh(self.lin(y) + y @ W_GLOBAL)


def _rhs(y, A):
    return torch.tanh(y @ A)


def _case(name: str):
    """``(func, the shapes of the tensors it uses that are not covered)``."""
    w = _weight()
    if name == "module_level_net":
        return (lambda t, y: NET(y)), [(5, 3), (5,), (3, 5), (3,)]
    if name == "list_closure":
        box = [w]
        return (lambda t, y: torch.tanh(y @ box[0])), [(DIM, DIM)]
    if name == "nested_helper":

        def helper(y):
            return torch.tanh(y @ w)

        return (lambda t, y: helper(y)), [(DIM, DIM)]
    if name == "partial":
        rhs = functools.partial(_rhs, A=w)
        return (lambda t, y: rhs(y)), [(DIM, DIM)]
    if name == "partial_object":
        return functools.partial(lambda t, y, A: _rhs(y, A), A=w), [(DIM, DIM)]
    if name == "callable_object":
        return _Holder(w), [(DIM, DIM)]
    if name == "module_with_global":
        return _UsesGlobal(), [(DIM, DIM)]
    if name == "non_leaf_from_uncovered_leaf":
        # computed outside func: its leaf w is what is missing (held, as an optimizer would)
        w2 = w * 2.0
        return (lambda t, y, keep=w: torch.tanh(y @ w2)), [(DIM, DIM)]
    raise AssertionError(name)


CASES = [
    "module_level_net",
    "list_closure",
    "nested_helper",
    "partial",
    "partial_object",
    "callable_object",
    "module_with_global",
    "non_leaf_from_uncovered_leaf",
]


@pytest.mark.parametrize("gradient", MEMORY_EFFICIENT)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("y0_grad", [True, False])
def test_uncovered_tensors_are_refused(case, gradient, y0_grad):
    func, shapes = _case(case)
    y0 = torch.linspace(-1.0, 1.0, DIM, dtype=torch.float64).requires_grad_(y0_grad)
    with pytest.raises(ValueError) as info:
        _solve(func, y0, gradient)
    msg = str(info.value)
    n = len(shapes)
    assert f"func uses {n} tensor{'s' if n > 1 else ''} that require grad" in msg
    for shape in shapes:
        assert str(shape) in msg
    assert "params=list(net.parameters())" in msg and "nn.Module" in msg
    assert f"gradient={gradient!r}" in msg


@pytest.mark.parametrize("gradient", MEMORY_EFFICIENT)
def test_tuple_state_and_decreasing_time_are_checked(gradient):
    w = _weight()
    y0 = (torch.ones(DIM, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"1 tensor that require grad.*\(3, 3\)"):
        _solve(lambda t, y: (torch.tanh(y[0] @ w), -y[1]), y0, gradient, t=(1.0, 0.0))


@pytest.mark.parametrize("gradient", MEMORY_EFFICIENT)
def test_explicit_params_missing_one_tensor(gradient):
    w1, w2 = _weight(0), _weight(1, (DIM,))
    with pytest.raises(ValueError, match=r"1 tensor that require grad .*\(3,\)"):
        _solve(lambda t, y: torch.tanh(y @ w1) * w2, torch.ones(DIM, dtype=torch.float64),
               gradient, params=[w1])  # fmt: skip


def _grads(func, y0, gradient, params=None, extra=(), solver_of=None):
    y = y0.detach().requires_grad_(True)
    kw = {} if params is None else {"params": params}
    ys = _solve(func, y, gradient, solver_of=solver_of, **kw)
    loss = (ys * torch.linspace(0.5, 1.5, ys.numel(), dtype=ys.dtype).view_as(ys)).sum()
    wrt = [y, *extra]
    return torch.autograd.grad(loss, wrt, allow_unused=True)


@pytest.mark.parametrize("gradient", MEMORY_EFFICIENT)
def test_params_given_match_direct(gradient):
    y0 = torch.linspace(-1.0, 1.0, DIM, dtype=torch.float64)
    params = list(NET.parameters())
    func = lambda t, y: NET(y)  # noqa: E731
    ref = _grads(func, y0, "direct", extra=params, solver_of=gradient)
    got = _grads(func, y0, gradient, params=params, extra=params)
    tol = _tol(gradient)
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=tol, atol=tol)


@pytest.mark.parametrize("gradient", MEMORY_EFFICIENT)
def test_module_func_and_duplicate_params_match_direct(gradient):
    func = _UsesGlobal()
    params = [*func.parameters(), W_GLOBAL]
    y0 = torch.linspace(-1.0, 1.0, DIM, dtype=torch.float64)
    ref = _grads(func, y0, "direct", extra=params, solver_of=gradient)
    # the same tensor twice is differentiated once (its gradient is not doubled)
    got = _grads(func, y0, gradient, params=[*params, W_GLOBAL], extra=params)
    tol = _tol(gradient)
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=tol, atol=tol)


@pytest.mark.parametrize("gradient", MEMORY_EFFICIENT)
def test_nothing_trainable_and_explicit_empty_params_pass(gradient):
    y0 = torch.linspace(-1.0, 1.0, DIM, dtype=torch.float64)
    fixed = _weight().detach()
    (g,) = _grads(lambda t, y: torch.tanh(y @ fixed), y0, gradient)
    (ref,) = _grads(lambda t, y: torch.tanh(y @ fixed), y0, "direct", solver_of=gradient)
    tol = _tol(gradient)
    torch.testing.assert_close(g, ref, rtol=tol, atol=tol)
    # params=() says "differentiate none of func's tensors": w is a constant, by request
    w = _weight()
    g, gw = _grads(lambda t, y: torch.tanh(y @ w), y0, gradient, params=(), extra=[w])
    torch.testing.assert_close(g, ref, rtol=tol, atol=tol)
    assert gw is None


@pytest.mark.parametrize("gradient", MEMORY_EFFICIENT)
def test_no_check_without_autograd(gradient):
    y0 = torch.linspace(-1.0, 1.0, DIM, dtype=torch.float64)
    with torch.no_grad():
        ys = _solve(lambda t, y: NET(y), y0, gradient)
    assert ys.shape == (3, DIM)


class _Divergence(nn.Module):
    """A CNF-style field: leaves made inside func (the state, a copy of the time) are not
    parameters anyone could train, and are not reported."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(DIM + 1, DIM).double()

    def forward(self, t, y):
        with torch.enable_grad():
            z = y if y.requires_grad else y.detach().requires_grad_(True)
            tt = t.clone().detach().requires_grad_(True)
            t.requires_grad_(True)
            dz = torch.tanh(self.net(torch.cat([z, (tt * t).expand(1)])))
            div = torch.autograd.grad(dz.sum(), z, create_graph=torch.is_grad_enabled())[0]
        return dz + 0.0 * div


@pytest.mark.parametrize("gradient", MEMORY_EFFICIENT)
def test_leaves_made_inside_func_are_not_reported(gradient):
    func = _Divergence()
    y0 = torch.linspace(-1.0, 1.0, DIM, dtype=torch.float64, requires_grad=True)
    ys = _solve(func, y0, gradient)
    ys.sum().backward()
    assert all(p.grad is not None for p in func.parameters())


@pytest.mark.parametrize("gradient", MEMORY_EFFICIENT)
def test_non_leaf_param_is_covered(gradient):
    w = _weight()
    w2 = w * 2.0
    y0 = torch.ones(DIM, dtype=torch.float64)
    _solve(lambda t, y: torch.tanh(y @ w2), y0, gradient, params=[w2])  # no ValueError


@pytest.mark.parametrize("gradient", MEMORY_EFFICIENT)
def test_the_check_costs_no_evaluation_and_no_buffer_update(gradient):
    """The check rides on the solve's own first evaluation: the same evaluation count and the
    same BatchNorm statistics as without it (under no_grad, where it does not run)."""
    net = nn.Sequential(nn.Linear(DIM, DIM), nn.BatchNorm1d(DIM)).double()
    y0 = torch.randn(4, DIM, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    counts, buffers = [], []
    for grad_mode in (False, True):
        net[1].reset_running_stats()
        with torch.set_grad_enabled(grad_mode):
            sol = torchmali.solve(
                lambda t, y: net(y), y0, t, method=_solver(gradient), options={"step_size": 0.25},
                gradient=gradient, params=list(net.parameters()),
            )  # fmt: skip
        counts.append(sol.stats.nfe_forward)
        buffers.append([b.clone() for b in net.buffers()])
    assert counts[0] == counts[1]
    for a, b in zip(*buffers, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        (3, TypeError, "params must be an iterable of tensors, got int"),
        ("W", TypeError, "params must be an iterable of tensors, got str"),
        (torch.ones(2), TypeError, "got a single tensor: pass params=\\[W\\]"),
        ([torch.ones(2), 1.0], TypeError, r"params\[1\] must be a tensor, got float"),
    ],
)
def test_params_must_be_tensors(params, error, match):
    y0 = torch.ones(2, dtype=torch.float64)
    with pytest.raises(error, match=match):
        torchmali.odeint(lambda t, y: -y, y0, [0.0, 1.0], params=params)


def test_adjoint_params_are_validated_and_may_be_a_generator():
    y0 = torch.ones(DIM, dtype=torch.float64)
    with pytest.raises(TypeError, match="params must be an iterable of tensors, got int"):
        torchmali.odeint_adjoint(lambda t, y: -y, y0, [0.0, 1.0], adjoint_params=3)
    NET.zero_grad(set_to_none=True)
    ys = torchmali.odeint_adjoint(lambda t, y: NET(y), y0, [0.0, 1.0],
                                  adjoint_params=NET.parameters())  # fmt: skip
    ys.sum().backward()
    assert all(p.grad is not None for p in NET.parameters())
