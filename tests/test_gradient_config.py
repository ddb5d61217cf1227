"""The gradient-method configurations: registry attributes and the lists derived from them,
argument validation with messages that name the fix, and the normalised fixed grid binomial
checkpointing plans on."""

from __future__ import annotations

import pytest
import torch

import torchmali
from torchmali.experiments import train
from torchmali.experiments.bench import plan
from torchmali.gradients import REGISTRY, names, resolve
from torchmali.nn import ODEBlock

DT = torch.float64


def test_every_list_of_methods_comes_from_the_registry():
    canonical = {cls.name for cls in REGISTRY.values()}
    assert set(names()) == canonical and len(names()) == len(canonical)
    assert names()[0] == "direct"
    assert set(names(exact=False)) == {c.name for c in REGISTRY.values() if not c.exact}
    assert "adjoint" in names(exact=False) and "mali" in names(exact=True, memory_efficient=True)
    assert names(memory_efficient=False) == ("direct",)
    assert train.GRADIENTS == plan.GRADIENTS == names()
    for cls in REGISTRY.values():
        assert cls.__doc__ and cls.name in REGISTRY
        assert resolve(cls.name).accepts(torchmali.ALF) or not cls.needs_reversible
    assert ODEBlock(lambda t, y: y, gradient="reversible").method == "alf"
    assert ODEBlock(lambda t, y: y, gradient=torchmali.Checkpoint()).method is None


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: torchmali.Binomial(checkpoints="a"), TypeError, "checkpoints must be an integer >= 1, got 'a'"),
        (lambda: torchmali.Binomial(checkpoints=2.5), TypeError, "integer >= 1, got 2.5"),
        (lambda: torchmali.Binomial(checkpoints=True), TypeError, "integer >= 1, got True"),
        (lambda: torchmali.Binomial(checkpoints=0), ValueError, r"e.g. Binomial\(checkpoints=8\)"),
        (lambda: torchmali.Binomial(-3), ValueError, "integer >= 1, got -3"),
        (lambda: torchmali.Mali(drift_tol="1e-4"), TypeError, r"drift_tol must be a finite number > 0, got '1e-4' \(str\)"),
        (lambda: torchmali.Mali(drift_tol=0.0), ValueError, "or None to only report"),
        (lambda: torchmali.Mali(parasitic_tol=float("nan")), ValueError, "parasitic_tol must be"),
        (lambda: torchmali.Mali(parasitic_tol=[1]), TypeError, "parasitic_tol must be"),
        (lambda: torchmali.Mali(on_drift="ignore"), ValueError, "on_drift must be 'warn' or 'raise'"),
        (lambda: torchmali.Mali(on_drift=None), TypeError, "on_drift must be 'warn' or 'raise'"),
        (lambda: torchmali.Mali(checkpoint_every=1.5), TypeError, "checkpoint_every must be an integer >= 1"),
        (lambda: torchmali.Mali(checkpoint_every=0), ValueError, r"e.g. Mali\(checkpoint_every=10\)"),
        (lambda: torchmali.Adjoint(rtol="1e-3"), TypeError, r"rtol must be a finite number >= 0, got '1e-3'"),
        (lambda: torchmali.Adjoint(atol=-1.0), ValueError, "atol must be a finite number >= 0"),
        (lambda: torchmali.Adjoint(method=3), TypeError, "valid methods are"),
        (lambda: torchmali.Adjoint(method=["rk4"]), TypeError, "valid methods are"),
        (lambda: torchmali.Adjoint(options=[("step_size", 0.1)]), TypeError, "must be a dict"),
    ],
)  # fmt: skip
def test_configuration_arguments_are_validated(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_valid_configuration_values_are_normalised():
    assert torchmali.Binomial(checkpoints=8.0).checkpoints == 8
    assert isinstance(torchmali.Binomial(checkpoints=8.0).checkpoints, int)
    assert torchmali.Mali(checkpoint_every=4.0).checkpoint_every == 4
    assert torchmali.Mali(drift_tol=1).drift_tol == 1.0
    assert torchmali.Mali(drift_tol=None, parasitic_tol=None).drift_tol is None
    assert torchmali.Adjoint(rtol=0, atol=1e-9).rtol == 0.0


@pytest.mark.parametrize(
    "times, step_t",
    [([3.0, 0.0], [1.513, 0.7071]), ([2.0, -1.0], [0.3337, -0.55]), ([0.0, 3.0], [1.513, 0.7071])],
)
def test_binomial_schedule_on_a_fixed_grid_with_step_t_is_optimal(times, step_t):
    """The forward pass plans the first sweep on the grid the loop steps on (normalised time,
    step_t included): with decreasing t it used to plan on a grid without step_t."""
    y0 = torch.ones(2, dtype=DT, requires_grad=True)
    sol = torchmali.solve(
        lambda t, y: -y,
        y0,
        torch.tensor(times, dtype=DT),
        method="rk4",
        options={"step_size": 0.03, "step_t": step_t},
        gradient=torchmali.Binomial(checkpoints=4),
    )
    sol.ys.sum().backward()
    assert sol.stats.n_accepted > 100  # the two step_t points split two regular steps
    assert sol.stats.recomputed_steps == sol.stats.optimal_recomputed_steps


def test_no_storage_without_grad_mode():
    """Under no_grad nothing can be differentiated: no states are kept."""
    y0 = torch.ones(3, dtype=DT, requires_grad=True)
    for gradient in names(memory_efficient=True):
        method = "alf" if resolve(gradient).accepts(torchmali.ALF) else "rk4"
        with torch.no_grad():
            sol = torchmali.solve(
                lambda t, y: -y, y0, torch.tensor([0.0, 1.0], dtype=DT), method=method,
                options={"step_size": 0.1}, gradient=gradient,
            )  # fmt: skip
        assert sol.stats.memory_bytes == 0 and not sol.ys.requires_grad
